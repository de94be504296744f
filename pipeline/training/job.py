"""Fine-tuning, top to bottom: (image, label map) pairs -> Ray Data (decode, augment) ->
Ray Train workers (DDP; `train_loop.py`) -> checkpoints -> the exported model.

Run folder (`--output`):
    train/                    Ray Train's run: step_XXXXXXXX/ checkpoints and its own state
    train/position.json       the latest complete checkpoint and its place in the sample stream
    model/model.safetensors   the exported full model (project format; `jobs/label.py --checkpoint`)
    model/taxonomy.yaml, model/model_config.json, model/training_summary.json, model/validation.md

Everything that can make the run fail before training (unreadable data, unwritable storage,
unavailable weights, a run already there without --resume) is checked before Ray starts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.fs as pafs
import yaml

from san_core.checkpoint import save_checkpoint
from san_core.model import SAN
from schemas.jobs import FinetuneConfig
from schemas.taxonomy import Taxonomy

from ..inputs import check_output_writable
from ..ray_session import ray_train_log_level
from ..storage import pyarrow_filesystem
from ..vocabulary import DEFAULT_CACHE_DIR, load_or_build_vocabulary
from ..weights import WeightsSpec, resolve_weights
from .data import (
    AugmentConfig,
    SampleOrder,
    TrainingPairs,
    TrainingSampleLoader,
    list_training_pairs,
    load_validation_pairs,
)
from .imports import import_annotations
from .loop import (
    METRIC_NAMES,
    POSITION_FILE,
    TrainLoopSpec,
    TrainState,
    load_trainable,
    read_position,
    read_train_state,
)
from .loop import train_loop_per_worker as train_loop

log = logging.getLogger(__name__)

RUN_NAME = "train"
EXPORT_DIR = "model"


class FinetuneError(RuntimeError):
    """The run cannot start as asked; nothing has been trained."""


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


@dataclass
class FinetunePlan:
    """What a run will do, decided before Ray starts."""

    config: FinetuneConfig
    taxonomy: Taxonomy
    weights: WeightsSpec
    init_digest: str | None
    driver_model: SAN  # the --init weights: builds the vocabulary, then receives the trained tensors
    embeddings: np.ndarray  # [C, D] text embeddings of the taxonomy's classes
    train: TrainingPairs
    val: TrainingPairs | None
    total_steps: int


@dataclass
class FinetuneResult:
    export_uri: str  # model.safetensors of the trained model
    state: TrainState
    wall_time_s: float


def total_steps(config: FinetuneConfig, num_pairs: int) -> int:
    """--max-steps, or --epochs over the pairs in whole global batches (the smaller if both)."""
    candidates = []
    if config.max_steps is not None:
        candidates.append(config.max_steps)
    if config.epochs is not None:
        candidates.append(max(1, config.epochs * num_pairs // config.batch_size))
    return min(candidates)


def _pairs(source: str, split: str, config: FinetuneConfig, taxonomy: Taxonomy) -> TrainingPairs:
    """A split's pairs; an annotation tool's JSON export (COCO, Label Studio) is first turned
    into label maps and a manifest under OUTPUT/_imported/<split>/."""
    if source.lower().rsplit("?", 1)[0].endswith(".json"):
        source = import_annotations(
            source,
            taxonomy,
            _join(config.output, f"_imported/{split}"),
            config.storage_options,
            image_root=config.image_root,
            max_pixels=config.max_pixels,
        )
    return list_training_pairs(source, config.storage_options)


def plan_finetune(config: FinetuneConfig, taxonomy: Taxonomy) -> FinetunePlan:
    """Check data, storage and weights; raise InputError / WeightsError / FinetuneError."""
    check_output_writable(config.output, config.storage_options)
    train = _pairs(config.train, "train", config, taxonomy)
    val = _pairs(config.val, "val", config, taxonomy) if config.val else None

    run_dir = _join(config.output, RUN_NAME)
    position = read_position(_join(run_dir, POSITION_FILE), config.storage_options)
    fs, run_path = fsspec.core.url_to_fs(run_dir, **config.storage_options)
    # Our own run folder, not Ray Train's internal files, says whether a run was started here.
    started = fs.exists(run_path) and bool(fs.ls(run_path, detail=False))
    if (position or started) and not config.resume:
        where = f" at step {position['step']}" if position else " (no checkpoint yet)"
        raise FinetuneError(
            f"{config.output} already holds a fine-tuning run{where}; pass --resume to continue it, "
            "or choose another --output"
        )

    weights = resolve_weights(config.init, config.storage_options)
    driver_model, init_digest = weights.load_checked("cpu")
    if position and position.get("init_digest") != init_digest:
        raise FinetuneError(
            f"the run in {config.output} was trained from weights with sha256 {position.get('init_digest')}, "
            f"but {weights.model_id} has {init_digest}; resume with the same weights"
        )
    table = load_or_build_vocabulary(taxonomy, driver_model, DEFAULT_CACHE_DIR, config.storage_options)
    embeddings = np.ascontiguousarray(table.embeddings[: len(taxonomy.classes)])  # distractors: labeling only

    steps = total_steps(config, len(train))
    if position:
        log.info(f"resuming the run in {config.output} at step {position['step']} of {steps}")
    elif config.resume:
        log.info(f"nothing to resume in {config.output}: starting at step 0")
    log.info(
        f"{len(train)} training pairs ({train.values}), {len(val) if val else 0} validation pairs, "
        f"{len(taxonomy.classes)} classes; {steps} steps of {config.batch_size} images on {config.workers} worker(s)"
    )
    return FinetunePlan(config, taxonomy, weights, init_digest, driver_model, embeddings, train, val, steps)


@dataclass(frozen=True)
class TrainDatasetFactory:
    """Builds the training sample stream when Ray Train starts (or restarts) the worker group:
    samples from the latest checkpoint's position up to the run's end, each decoded and augmented
    by a pool of loader actors."""

    pairs_ref: list
    order: SampleOrder
    augment_config: AugmentConfig
    total_samples: int
    position_uri: str
    storage_options: Mapping[str, Any]
    loaders: int
    batch_size: int

    def __call__(self) -> Any:
        import ray

        position = read_position(self.position_uri, self.storage_options)
        samples = np.arange(position["samples"] if position else 0, self.total_samples, dtype=np.int64)
        # Blocks of a few batches: the stream stays fine-grained, and no read task needs a CPU.
        blocks = np.array_split(samples, max(1, len(samples) // (8 * self.batch_size)))
        dataset = ray.data.from_numpy(blocks)
        return dataset.map_batches(
            TrainingSampleLoader,
            fn_constructor_kwargs={
                "pairs_ref": self.pairs_ref,
                "order": self.order,
                "augment_config": self.augment_config,
                "storage_options": self.storage_options,
            },
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.loaders),
            num_cpus=0.5,  # decoding overlaps the workers' compute
        )


def validation_dataset(pairs: TrainingPairs, config: FinetuneConfig) -> Any:
    import ray

    items = [{"image_uri": i, "label_uri": lab} for i, lab in zip(pairs.image_uris, pairs.label_uris, strict=True)]
    # Ray Train splits datasets into equal shards, dropping the remainder; empty rows pad the
    # count to a multiple of the workers so that every pair is scored.
    items += [{"image_uri": "", "label_uri": ""}] * (-len(items) % config.workers)
    dataset = ray.data.from_items(items)
    return dataset.map_batches(
        load_validation_pairs,
        fn_kwargs={
            "short_side": config.crop_size,
            "max_long_side": 4 * config.crop_size,
            "storage_options": config.storage_options,
        },
        batch_size=4,
        num_cpus=0.5,
    )


def _storage(config: FinetuneConfig) -> tuple[str, Any]:
    """Ray Train's storage_path and filesystem for --storage."""
    fs, path = fsspec.core.url_to_fs(config.output, **config.storage_options)
    filesystem = pyarrow_filesystem(fs)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return str(Path(path).resolve()), None  # Ray Train's own handling of local paths
    return path, filesystem


def run_finetune(plan: FinetunePlan, log_level: str = "INFO") -> FinetuneResult:
    """Train on the connected Ray cluster, then export the trained model into the run folder."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.time()
    config, taxonomy = plan.config, plan.taxonomy
    class_ids = [c.id for c in taxonomy.classes]
    run_dir = _join(config.output, RUN_NAME)
    position_uri = _join(run_dir, POSITION_FILE)
    use_gpu = config.gpus_per_worker > 0

    spec = TrainLoopSpec(
        weights=plan.weights,
        init_digest=plan.init_digest,
        vocabulary_ref=[ray.put(plan.embeddings)],
        value_to_index=plan.train.value_to_index(class_ids),
        val_value_to_index=plan.val.value_to_index(class_ids) if plan.val else {},
        total_steps=plan.total_steps,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
        precision=config.precision,
        torch_threads=config.torch_threads or max(1, int(config.cpus_per_worker)),
        eval_every=config.eval_every if plan.val else None,
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        seed=config.seed,
        run_dir=run_dir,
        position_uri=position_uri,
        storage_options=config.storage_options,
    )
    datasets: dict[str, Any] = {
        "train": TrainDatasetFactory(
            pairs_ref=[ray.put((plan.train.image_uris, plan.train.label_uris))],
            order=SampleOrder(len(plan.train), config.seed),
            augment_config=AugmentConfig.named(config.augment, config.crop_size),
            total_samples=plan.total_steps * config.batch_size,
            position_uri=position_uri,
            storage_options=config.storage_options,
            loaders=config.loaders,
            batch_size=config.per_worker_batch_size,
        )
    }
    if spec.eval_every:
        datasets["val"] = validation_dataset(plan.val, config)  # type: ignore[arg-type]
    # One worker then sees the samples in their planned order (several split the stream dynamically).
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True
    storage_path, storage_filesystem = _storage(config)
    resources = {"CPU": config.cpus_per_worker} | ({"GPU": config.gpus_per_worker} if use_gpu else {})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=config.max_failures),
            logging_config=LoggingConfig(log_level=ray_train_log_level(log_level)),
        ),
        datasets=datasets,
        dataset_config=DataConfig(execution_options={"train": ingest}),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error

    final = read_position(position_uri, config.storage_options)
    if final is None or final["step"] != plan.total_steps:
        raise FinetuneError(f"training ended without a checkpoint at step {plan.total_steps} ({final})")
    state = read_train_state(final["checkpoint"], config.storage_options)
    load_trainable(plan.driver_model, final["checkpoint"], f"checkpoint at step {state.step}", config.storage_options)
    export_uri = export_model(plan, state, time.time() - started)
    prune_checkpoints(run_dir, config.checkpoints_to_keep, config.storage_options)
    log.info(f"trained {state.step} steps in {time.time() - started:.1f}s; model exported to {export_uri}")
    if state.validations:
        log.info(validation_table(state.validations))
    return FinetuneResult(export_uri, state, time.time() - started)


def prune_checkpoints(run_dir: str, keep: int, storage_options: Mapping[str, Any]) -> list[str]:
    """After a finished run, keep only the `keep` latest step_* checkpoints, as Ray Train's retention
    does. Older ones can remain after failures: a checkpoint uploaded just before a worker or driver
    died was never registered with Ray Train, so its retention never deletes it."""
    fs, path = fsspec.core.url_to_fs(run_dir, **storage_options)
    fs.invalidate_cache()
    steps = sorted(
        p.rstrip("/") for p in fs.ls(path, detail=False) if p.rstrip("/").rsplit("/", 1)[-1].startswith("step_")
    )
    for old in steps[:-keep]:
        fs.rm(old, recursive=True)
    return steps[:-keep]


def validation_table(rows: list[dict[str, float]]) -> str:
    lines = ["| step | " + " | ".join(METRIC_NAMES) + " |", "|---" * (len(METRIC_NAMES) + 1) + "|"]
    lines += [f"| {int(r['step'])} | " + " | ".join(f"{r[n]:.2f}" for n in METRIC_NAMES) + " |" for r in rows]
    return "\n".join(lines)


def export_model(plan: FinetunePlan, state: TrainState, wall_time_s: float) -> str:
    """Write the trained full model with its config, taxonomy and training summary."""
    config = plan.config
    root = _join(config.output, EXPORT_DIR)
    uri = _join(root, "model.safetensors")
    trainable = set(plan.driver_model.trainable_parameter_names())
    digest = save_checkpoint(plan.driver_model, plan.driver_model.config, uri, config.storage_options)
    taxonomy_yaml = yaml.safe_dump(plan.taxonomy.model_dump(mode="json", exclude_none=True), sort_keys=False)
    summary = {
        "model_sha256": digest,
        "init": plan.weights.model_id,
        "init_sha256": plan.init_digest,
        "taxonomy_digest": plan.taxonomy.digest(),
        "trainable_parameters": sum(p.numel() for n, p in plan.driver_model.named_parameters() if n in trainable),
        "config": config.for_record(),
        "train_pairs": len(plan.train),
        "val_pairs": len(plan.val) if plan.val else 0,
        "wall_time_s": round(wall_time_s, 3),
        **asdict(state),
    }
    files = {
        "taxonomy.yaml": taxonomy_yaml,
        "model_config.json": plan.driver_model.config.model_dump_json(indent=2),
        "training_summary.json": json.dumps(summary, indent=2),
        "validation.md": validation_table(state.validations) + "\n" if state.validations else None,
    }
    for name, text in files.items():
        if text is not None:
            with fsspec.open(_join(root, name), "w", **config.storage_options) as f:
                f.write(text)
    return uri
