"""What each Ray Train worker runs: load SAN, freeze CLIP, train on this worker's shard of the
sample stream, validate, and checkpoint.

A checkpoint (a Ray Train checkpoint directory, uploaded by `ray.train.report`) holds:
    trainable.safetensors  the trainable tensors, project format (config in its metadata)
    optimizer.pt           AdamW and LR-schedule state
    train_state.json       step, data position (samples consumed), loss curve, validations
Once the upload has returned, rank 0 writes POSITION_FILE in the run folder, naming that
checkpoint and its position. It is the one record a (re)started run continues from: the dataset
factory starts the sample stream there and the workers load that checkpoint. (Ray Train's own
latest checkpoint can lag behind it: the controller registers a report asynchronously, so a
worker killed right after reporting may leave it unregistered.)
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
import torch.distributed as dist

from san_core.checkpoint import load_subset, read_checkpoint, save_checkpoint
from san_core.criterion import SetCriterion, Target
from san_core.model import SAN
from san_core.optim import build_optimizer, poly_schedule
from san_core.precision import gpu_runs_bf16_natively
from san_core.training import TrainingForward, training_step

from ..evaluation.metrics import ConfusionMatrix
from ..weights import WeightsSpec
from .data import IGNORE, targets_from_labels

log = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"
POSITION_FILE = "position.json"
METRIC_NAMES = ("mIoU", "fwIoU", "mACC", "pACC")


@dataclass(frozen=True)
class TrainLoopSpec:
    """Everything a worker needs, decided by the driver."""

    weights: WeightsSpec
    init_digest: str | None  # the --init weights' sha256; a resumed run must start from the same
    vocabulary_ref: list  # [ObjectRef] of the taxonomy classes' text embeddings [C, D]
    value_to_index: dict[int, int]  # label-map value -> class index (training data)
    val_value_to_index: dict[int, int]
    total_steps: int
    batch_size: int  # global
    lr: float
    weight_decay: float
    grad_clip: float
    precision: str  # auto, fp32, bf16
    torch_threads: int
    eval_every: int | None
    checkpoint_every: int
    log_every: int
    seed: int
    run_dir: str  # Ray Train's run folder (URI): checkpoints land in RUN_DIR/step_XXXXXXXX
    position_uri: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TrainState:
    """What a checkpoint remembers besides tensors: the step, the data position and the history."""

    step: int = 0
    samples: int = 0  # training samples consumed: the position in the sample stream
    losses: list[dict[str, float]] = field(default_factory=list)  # per step: step, loss, lr
    validations: list[dict[str, float]] = field(default_factory=list)  # step and METRIC_NAMES
    resumed_at: list[int] = field(default_factory=list)  # steps a restarted worker group continued from
    skipped: list[str] = field(default_factory=list)  # unreadable pairs, replaced in the stream
    init_digest: str | None = None

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        return cls(**json.loads(text))


def read_position(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The latest complete checkpoint: {"step", "samples", "init_digest", "checkpoint": its URI}, or None."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def write_position(uri: str, record: dict[str, Any], storage_options: Mapping[str, Any] | None = None) -> None:
    """Replace the position file in one step: a worker killed while writing leaves the old one."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    fs.pipe_file(f"{path}.tmp", json.dumps(record).encode())
    fs.mv(f"{path}.tmp", path)


def load_trainable(
    san: SAN, checkpoint_uri: str, source: str, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Copy a checkpoint's trainable tensors into a model built from the --init weights."""
    loaded = read_checkpoint(f"{checkpoint_uri.rstrip('/')}/{TRAINABLE_FILE}", storage_options)
    load_subset(san, loaded.state_dict, set(san.trainable_parameter_names()), source=source)


def read_train_state(checkpoint_uri: str, storage_options: Mapping[str, Any] | None = None) -> TrainState:
    with fsspec.open(f"{checkpoint_uri.rstrip('/')}/{STATE_FILE}", "r", **(storage_options or {})) as f:
        return TrainState.from_json(f.read())


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def _mean_over_workers(value: float, device: torch.device) -> float:
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return float(_sum_over_workers(np.array([value], dtype=np.float64), device)[0]) / world


def _sum_over_workers(counts: np.ndarray, device: torch.device) -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()):
        return counts
    tensor = torch.from_numpy(counts).to(device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()


def _gather_over_workers(items: list[str]) -> list[str]:
    if not (dist.is_available() and dist.is_initialized()):
        return items
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]


def batch_inputs(
    batch: dict[str, np.ndarray], value_to_index: dict[int, int], device: torch.device
) -> tuple[list[torch.Tensor], list[Target]]:
    """A stream batch (uint8 crops, uint16 label maps) as model images and loss targets."""
    images, targets = [], []
    for image, labels in zip(batch["image"], batch["labels"], strict=True):
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().to(device))
        indices, masks = targets_from_labels(labels, value_to_index)
        targets.append(Target(torch.from_numpy(indices).to(device), torch.from_numpy(masks).float().to(device)))
    return images, targets


@torch.no_grad()
def validate(
    san: SAN, embeddings: torch.Tensor, shard: Any, value_to_index: dict[int, int], device: torch.device
) -> tuple[ConfusionMatrix, int, int]:
    """Confusion matrix of the validation pairs (every worker scores its shard; summed over
    workers), the number of images scored and of unreadable pairs. Predictions run at the
    labeling job's resolution and are scored at the label map's size."""
    num_classes = len(embeddings)
    lookup = np.full(IGNORE + 1, num_classes, dtype=np.int64)  # values outside the map: ignored
    for value, index in value_to_index.items():
        lookup[value] = index
    confusion = ConfusionMatrix.empty(num_classes)
    scored = errors = 0
    san.eval()
    for batch in shard.iter_batches(batch_size=1, batch_format="numpy"):
        for i in range(len(batch["image_uri"])):
            if not batch["image_uri"][i]:  # padding that keeps the split even
                continue
            if isinstance(batch["error"][i], str) and batch["error"][i]:  # all-null arrives as NaN
                errors += 1
                continue
            h, w = int(batch["input_height"][i]), int(batch["input_width"][i])
            pixels = np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(h, w, 3)
            image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().to(device)
            size = (int(batch["height"][i]), int(batch["width"][i]))
            prediction, _ = san.predict_labels([image], embeddings, [size])[0]
            truth = lookup[np.frombuffer(batch["labels"][i], dtype=np.uint16).reshape(size)]
            confusion = confusion + ConfusionMatrix.from_maps(
                prediction.cpu().numpy(), truth, num_classes, ignore_label=num_classes
            )
            scored += 1
    san.train()
    counts = _sum_over_workers(confusion.counts, device)
    totals = _sum_over_workers(np.array([scored, errors], dtype=np.int64), device)
    return ConfusionMatrix(counts), int(totals[0]), int(totals[1])


def _save(san: SAN, optimizer: Any, scheduler: Any, state: TrainState, directory: Path) -> None:
    save_checkpoint(san, san.config, str(directory / TRAINABLE_FILE), only=set(san.trainable_parameter_names()))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, directory / OPTIMIZER_FILE)
    (directory / STATE_FILE).write_text(json.dumps(asdict(state)))


def _restore(san: SAN, optimizer: Any, scheduler: Any, checkpoint_uri: str, spec: TrainLoopSpec) -> TrainState:
    state = read_train_state(checkpoint_uri, spec.storage_options)
    if state.init_digest != spec.init_digest:
        raise RuntimeError(
            f"the checkpoint was trained from --init weights with sha256 {state.init_digest}, "
            f"but this run starts from {spec.init_digest}; resume with the same --init"
        )
    load_trainable(san, checkpoint_uri, f"checkpoint at step {state.step}", spec.storage_options)
    with fsspec.open(f"{checkpoint_uri.rstrip('/')}/{OPTIMIZER_FILE}", "rb", **spec.storage_options) as f:
        saved = torch.load(io.BytesIO(f.read()), map_location=san.device, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return state


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function (TorchTrainer's train_loop_per_worker)."""
    import ray
    import ray.train
    import ray.train.torch

    spec: TrainLoopSpec = loop_config["spec"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    lead = rank == 0
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(spec.torch_threads)
    # auto trains in bf16 only on a GPU that has it natively; on a CPU it stays fp32
    native = device.type == "cuda" and gpu_runs_bf16_natively(device=device)
    autocast_dtype = torch.bfloat16 if spec.precision == "bf16" or (spec.precision == "auto" and native) else None

    san, _ = spec.weights.load(str(device))
    trainable_count = san.freeze_for_finetuning()
    san.train()
    embeddings = torch.from_numpy(np.array(ray.get(spec.vocabulary_ref[0]))).to(device)
    criterion = SetCriterion(num_classes=len(embeddings))
    optimizer = build_optimizer(san, spec.lr, spec.weight_decay)
    scheduler = poly_schedule(optimizer, spec.total_steps)
    state = TrainState(init_digest=spec.init_digest)
    position = read_position(spec.position_uri, spec.storage_options)
    if position is not None:
        state = _restore(san, optimizer, scheduler, position["checkpoint"], spec)
        state.resumed_at.append(state.step)
    if lead:
        where = f"resuming at step {state.step}" if position else "starting at step 0"
        log.info(
            "%d worker(s) on %s, %s trainable parameters, %d classes, %d steps of %d images; %s",
            world,
            device.type,
            f"{trainable_count:,}",
            len(embeddings),
            spec.total_steps,
            spec.batch_size,
            where,
        )
    network = ray.train.torch.prepare_model(
        TrainingForward(san), parallel_strategy_kwargs={"broadcast_buffers": False, "find_unused_parameters": False}
    )

    shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if spec.eval_every else None
    per_worker = spec.batch_size // world
    window: list[float] = []
    skipped_here: list[str] = []  # this worker's unreadable pairs since the last checkpoint
    window_start = time.perf_counter()
    for batch in shard.iter_batches(batch_size=per_worker, batch_format="numpy", drop_last=True):
        if state.step >= spec.total_steps:
            break
        torch.manual_seed(spec.seed * 1_000_003 + state.step * world + rank)  # point sampling; resumable
        images, targets = batch_inputs(batch, spec.value_to_index, device)
        losses = training_step(
            network, san, criterion, optimizer, scheduler, images, targets, embeddings, spec.grad_clip, autocast_dtype
        )
        loss = _mean_over_workers(losses["loss"], device)
        state.step += 1
        state.samples += spec.batch_size
        state.losses.append({"step": state.step, "loss": loss, "lr": losses["lr"]})
        for problem in batch["skipped"]:
            if problem and problem not in state.skipped and problem not in skipped_here:  # once, not every epoch
                skipped_here.append(problem)
                log.warning("rank %d skipped an unreadable pair (replaced by the next one): %s", rank, problem)
        window.append(loss)
        if lead and (state.step % spec.log_every == 0 or state.step == spec.total_steps):
            rate = len(window) / max(time.perf_counter() - window_start, 1e-9)
            log.info(
                "step %d/%d loss %.4f lr %.3g %.3f steps/s",
                state.step,
                spec.total_steps,
                np.mean(window),
                losses["lr"],
                rate,
            )
            window, window_start = [], time.perf_counter()

        metrics: dict[str, float] = {}
        last = state.step == spec.total_steps
        if val_shard is not None and (state.step % spec.eval_every == 0 or last):
            confusion, scored, errors = validate(san, embeddings, val_shard, spec.val_value_to_index, device)
            scores = confusion.metrics()
            row = {"step": state.step, **{name: float(scores[name]) for name in METRIC_NAMES}, "images": scored}
            state.validations.append(row)
            metrics.update({f"val_{name}": row[name] for name in METRIC_NAMES})
            if lead:
                log.info(
                    "validation at step %d: %s%s",
                    state.step,
                    ", ".join(f"{n} {row[n]:.2f}" for n in METRIC_NAMES),
                    f" ({errors} unreadable pairs skipped)" if errors else "",
                )
        save = state.step % spec.checkpoint_every == 0 or last
        if save:  # every rank's skipped pairs into the checkpointed state (a collective: not every step)
            state.skipped += [p for p in dict.fromkeys(_gather_over_workers(skipped_here)) if p not in state.skipped]
            skipped_here = []
        if save or metrics:
            metrics.update({"step": state.step, "samples": state.samples, "loss": loss, "lr": losses["lr"]})
            _report(san, optimizer, scheduler, state, metrics, save, lead)
            if save and lead:  # the upload has returned: later (re)starts continue from here
                record = {
                    "step": state.step,
                    "samples": state.samples,
                    "init_digest": spec.init_digest,
                    "checkpoint": f"{spec.run_dir.rstrip('/')}/{checkpoint_name(state.step)}",
                }
                write_position(spec.position_uri, record, spec.storage_options)
        if last:
            break
    if state.step < spec.total_steps:
        raise RuntimeError(f"the sample stream ended at step {state.step} of {spec.total_steps}")


def _report(
    san: SAN, optimizer: Any, scheduler: Any, state: TrainState, metrics: dict[str, float], save: bool, lead: bool
) -> None:
    """Report metrics to Ray Train; with `save`, rank 0 attaches a checkpoint (every rank must call)."""
    import ray.train

    name = checkpoint_name(state.step) if save else None
    if not (save and lead):
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory() as directory:
        _save(san, optimizer, scheduler, state, Path(directory))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory), checkpoint_dir_name=name)
