"""The labeling actors' pool and what every actor is built from: how many actors, with how much
of a GPU, at which batch size (the flags where given, else what the cluster has), and the typed
spec shared by the image and the video actors."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.jobs import ACTORS_PER_GPU, CPU_BATCH_SIZE, GPU_BATCH_SIZE, LabelJobConfig
from schemas.output import Provenance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorSpec:
    """What every labeling actor, of images or of videos, is built from."""

    weights_ref: list  # [ObjectRef of SharedWeights]: a list, so Ray hands the reference, not the value
    vocabulary_ref: list  # [ObjectRef of VocabularyTable]
    provenance: Provenance
    use_gpu: bool
    precision: str  # fp32 or bf16, resolved by the driver
    torch_threads: int
    progress: Any = None  # a ProgressCounter actor, told of every batch
    uncertainty_map: bool = False

    def load(self) -> LoadedModel:
        """In the actor: the model from the driver's copy in the object store (no actor reads the
        checkpoint), and the vocabulary's embeddings on the actor's device."""
        import warnings

        import numpy as np
        import ray
        import torch

        torch.set_num_threads(max(1, self.torch_threads))
        device = "cuda" if self.use_gpu and torch.cuda.is_available() else "cpu"
        vocabulary = ray.get(self.vocabulary_ref[0])  # the object-store copy, zero-copy numpy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only shared memory; never written
            embeddings = torch.from_numpy(vocabulary.embeddings).to(device)
        class_ids = torch.from_numpy(vocabulary.class_ids.astype(np.int64)).to(device)
        return LoadedModel(device, ray.get(self.weights_ref[0]).build(device), vocabulary, embeddings, class_ids)


@dataclass
class LoadedModel:
    """What an actor labels with."""

    device: str
    model: Any  # san_core's SAN
    vocabulary: Any  # VocabularyTable
    embeddings: Any  # torch.Tensor [classes, dim] on the device
    class_ids: Any  # torch.Tensor [classes] on the device


def cluster_gpus() -> tuple[float, float]:
    """(GPUs up now, the most the cluster can have): the second from the autoscaler's node types in
    the GCS (the record Ray Train reads for the same question), or the first where there is no
    autoscaler (a local or fixed cluster)."""
    import ray

    up = float(ray.cluster_resources().get("GPU", 0))
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception as e:  # no autoscaler record
        log.debug("no autoscaler configuration to read: %s", e)
        most = {}
    return up, max(up, float(most.get("GPU", 0)))


def gpus_per_actor(requested: float | None) -> float:
    """`--gpus-per-actor` if given; else 1/ACTORS_PER_GPU when the cluster has GPUs or can get
    them: GPUs up now, or node types with GPUs in the autoscaler's configuration. So on an
    autoscaling cluster whose GPU nodes are still down, the actors ask for GPUs and the autoscaler
    brings those nodes up."""
    if requested is not None:
        return requested
    up, most = cluster_gpus()
    if not up and most:
        log.info(f"no GPU is up yet, but the cluster's node types offer {most:g}: the actors ask for them")
    return 1.0 / ACTORS_PER_GPU if most else 0.0


@dataclass(frozen=True)
class ActorLayout:
    """How the stream's actors are laid out, the flags' defaults resolved on the cluster."""

    gpus: float  # per actor
    concurrency: tuple[int, int]  # actors: min, max
    batch_size: int  # images per model call

    def record(self) -> dict[str, Any]:
        return {"gpus_per_actor": self.gpus, "concurrency": list(self.concurrency), "batch_size": self.batch_size}

    def pool(self) -> dict[str, Any]:
        """Ray Data's `map_batches` arguments for a pool of these actors."""
        return {"compute": ray_actor_pool(self.concurrency), "num_gpus": self.gpus, "num_cpus": 1}


def actor_layout(config: LabelJobConfig) -> ActorLayout:
    """The flags where given; else, with GPUs, ACTORS_PER_GPU actors per GPU up (growing to as many
    as the autoscaler's GPUs allow) at GPU_BATCH_SIZE, and without, one actor at CPU_BATCH_SIZE."""
    gpus = gpus_per_actor(config.gpus_per_actor)
    concurrency = config.concurrency
    if concurrency is None:
        up, most = cluster_gpus() if gpus > 0 else (0.0, 0.0)
        concurrency = (max(1, int(up / gpus + 1e-6)), max(1, int(most / gpus + 1e-6))) if gpus > 0 else (1, 1)
    batch_size = config.batch_size or (GPU_BATCH_SIZE if gpus > 0 else CPU_BATCH_SIZE)
    return ActorLayout(gpus, concurrency, batch_size)


def cluster_gpu_types(resources: Mapping[str, float]) -> set[str]:
    """The GPU names in a Ray cluster's resources (`accelerator_type:T4` -> T4), which Ray adds
    for the cards it detects on each node."""
    prefix = "accelerator_type:"
    return {name.removeprefix(prefix) for name, amount in resources.items() if name.startswith(prefix) and amount}


def ray_actor_pool(concurrency: tuple[int, int]) -> Any:
    import ray

    # Ray Data runs a callable class's calls on a thread of their own unless told otherwise; with
    # one call at a time (max_concurrency 1) that overlaps nothing, and PyTorch's CPU kernels run
    # some 20% slower off a process's main thread (benchmarks/README.md). So the calls run on
    # the actor's main thread, still one at a time.
    return ray.data.ActorPoolStrategy(
        min_size=concurrency[0], max_size=concurrency[1], enable_true_multi_threading=True
    )


def torch_threads_per_actor(config: LabelJobConfig, actors: int) -> int:
    """`--torch-threads`, else the CPUs of a node shared among its actors."""
    if config.torch_threads:
        return config.torch_threads
    import ray

    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    nodes = max(1, len([n for n in ray.nodes() if n.get("Alive")]))
    return max(1, cpus // nodes // actors)
