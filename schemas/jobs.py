"""Configs of the command-line jobs, the single source of their flags, defaults and help
(`schemas.cli` derives the flags). One vocabulary across jobs: `--input` is what a job reads,
`--output` what it writes, `--vocab` the taxonomy, `--model NAME` or `--checkpoint URI` (with
`--model-config`) the weights, `--storage-options` the fsspec options."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .uris import Uri, VocabRef

DEFAULT_MODEL = "san-vit-b16"
# Per-image limits for untrusted input, both checked from the file's header before decoding.
MAX_PIXELS = 100_000_000  # Pillow's own bomb guard (~179 Mpx) would fire only at open
# Enough for a 100-megapixel RGB image (Pillow holds 4 bytes per RGB pixel) and its conversions.
MAX_IMAGE_MIB = 1024
DEFAULT_LEASE_SECONDS = 120.0  # how long a crashed run on another host keeps an output from the next
OUTPUT_BUSY_EXIT = 75  # sysexits' EX_TEMPFAIL: another run holds the output; a scheduler tries later


def _cli(**options: Any) -> dict[str, Any]:
    return {"cli": options}


_SECRET_KEY = re.compile(r"key|secret|token|pass|session|credential|auth|sig|connection", re.IGNORECASE)
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@]+@", re.IGNORECASE)
_QUERY = re.compile(r"^([a-z][a-z0-9+.-]*://[^?#]*)\?[^#]*", re.IGNORECASE)
REDACTED = "<redacted>"
# What a record may show of --storage-options: these keys' values, and no other's (an allow-list:
# every backend names its secrets differently, connection_string, sas_token, credentials, ...).
# Nested options (client_kwargs, config_kwargs) are held to the same list.
RECORDED_STORAGE_OPTIONS = frozenset({
    "anon", "requester_pays", "endpoint_url", "region_name", "use_ssl", "verify", "version_aware",
    "default_block_size", "default_cache_type", "default_fill_cache", "cache_regions", "use_listings_cache",
    "listings_expiry_time", "max_concurrency", "skip_instance_cache", "client_kwargs", "config_kwargs",
    "s3", "addressing_style", "signature_version", "connect_timeout", "read_timeout", "retries",
    "max_attempts", "mode", "max_pool_connections", "project", "account_name", "auto_mkdir",
})  # fmt: skip


def _redact_uri(value: str) -> str:
    """A URI without user info or query (presigned URLs and SAS tokens carry signatures there)."""
    return _QUERY.sub(rf"\1?{REDACTED}", _USERINFO.sub(rf"\1{REDACTED}@", value))


def _storage_record(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _storage_record(v) if k in RECORDED_STORAGE_OPTIONS else REDACTED for k, v in value.items()}
    if isinstance(value, list):
        return [_storage_record(v) for v in value]
    return _redact_uri(value) if isinstance(value, str) else value


def redact(value: Any, key: str = "") -> Any:
    """`value` as a record may show it: --storage-options by allow-list, every other
    secret-looking entry (by key name) replaced, URIs without user info or query."""
    if isinstance(value, dict):
        return {k: _storage_record(v) if k == "storage_options" else redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if _SECRET_KEY.search(key) and value not in (None, True, False):
        return REDACTED
    if isinstance(value, str):
        return _redact_uri(value)
    return value


class _JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def for_record(self) -> dict[str, Any]:
        """The config as JSON for manifests and summaries: credentials never written down."""
        return redact(self.model_dump(mode="json"))


STORAGE_OPTIONS = Field(
    default_factory=dict,
    description="JSON object passed to fsspec, e.g. '{\"anon\": false}'",
    json_schema_extra=_cli(metavar="JSON"),
)
POLYGON_TOLERANCE = Field(
    default=1.0, ge=0.0, description="how far (pixels) a simplified polygon may stray from the mask's outline"
)
VOCAB = Field(
    description="taxonomy.yaml (path or URI), or a shipped vocabulary: "
    "ade150, ade847, coco-stuff-171, pc59, pc459, voc20",
    json_schema_extra=_cli(metavar="TAXONOMY"),
)

# The labeling actors' resources, shared by the jobs that label.
# Defaults that follow the cluster (resolved when Ray is up: pipeline.labeling.actors.actor_layout).
CPU_BATCH_SIZE = 4
GPU_BATCH_SIZE = 32  # the networks' rate at 32 is 7-10 times batch 1's on an H200, in bf16
ACTORS_PER_GPU = 2  # one actor's host side (batches in and out, kernel launches) overlaps the other's device work
BATCH_SIZE = Field(
    default=None,
    ge=1,
    description=f"images per model call (default: {GPU_BATCH_SIZE} when the actors have GPUs, else {CPU_BATCH_SIZE})",
)
CONCURRENCY = Field(
    default=None,
    description=f"labeling actors: N, or MIN,MAX to autoscale (default: {ACTORS_PER_GPU} per GPU when the actors "
    "have GPUs, up to as many as the autoscaler can bring up, else 1)",
    json_schema_extra=_cli(parse="min_max", metavar="MIN[,MAX]"),
)
GPUS_PER_ACTOR = Field(
    default=None,
    ge=0.0,
    description=f"GPUs per actor, fractions allowed (default: 1/{ACTORS_PER_GPU} if the cluster has GPUs up or GPU "
    "node types in its autoscaler configuration, else 0)",
)


class ModelChoice(_JobConfig):
    """Which SAN weights: a preset name, or a checkpoint URI (with an optional config file)."""

    model: str | None = Field(
        default=None,
        description=f"preset: san-vit-b16 or san-vit-l14-336; its published checkpoint (default: {DEFAULT_MODEL})",
        json_schema_extra=_cli(metavar="NAME"),
    )
    checkpoint: Uri | None = Field(
        default=None,
        description="checkpoint path or URI (.pth or .safetensors), instead of --model",
        json_schema_extra=_cli(metavar="URI"),
    )
    model_config_uri: Uri | None = Field(
        default=None,
        description="JSON model config for a --checkpoint that carries none",
        json_schema_extra=_cli(flag="--model-config", metavar="URI"),
    )

    @model_validator(mode="before")
    @classmethod
    def _default_preset(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("model") is None and values.get("checkpoint") is None:
            return values | {"model": DEFAULT_MODEL}
        return values

    @model_validator(mode="after")
    def _one_source(self) -> ModelChoice:
        if self.model is not None and self.checkpoint is not None:
            raise ValueError("give --model NAME or --checkpoint URI, not both")
        if self.model_config_uri is not None and self.checkpoint is None:
            raise ValueError("--model-config only applies to --checkpoint")
        return self


# Video sampling defaults: 2 frames a second is 7,200 rows for an hour of video, and a clip of 8
# sampled frames (4 s at 2 fps) is what one clustering sees; see README: Labeling videos.
DEFAULT_VIDEO_FPS = 2.0
DEFAULT_CLIP_LENGTH = 8


class LabelJobConfig(_JobConfig):
    """`san label`: label images and videos with SAN, streamed through Ray Data into Parquet."""

    vocab: VocabRef = VOCAB
    input: Uri = Field(
        description="images and videos: a folder or prefix (searched recursively), a glob, or a manifest "
        "(.txt, or .csv/.parquet with a uri column)",
        json_schema_extra=_cli(metavar="URI"),
    )
    output: Uri = Field(
        description="output folder or prefix: Parquet, previews, _manifest.json", json_schema_extra=_cli(metavar="URI")
    )
    weights: ModelChoice = Field(default_factory=ModelChoice)
    batch_size: int | None = BATCH_SIZE
    concurrency: tuple[int, int] | None = CONCURRENCY
    gpus_per_actor: float | None = GPUS_PER_ACTOR
    torch_threads: int | None = Field(default=None, ge=1, description="threads per actor (default: node CPUs / actors)")
    rows_per_file: int = Field(default=256, ge=1, description="images per output Parquet file (the resume unit)")
    max_pixels: int = Field(default=MAX_PIXELS, ge=1, description="larger images become error rows")
    max_image_mib: int = Field(
        default=MAX_IMAGE_MIB,
        ge=1,
        description="memory one image may take to decode, estimated from its header; more becomes an error row",
    )
    short_side: int = Field(default=640, ge=32, description="model input short side (the reference test size)")
    max_long_side: int = Field(default=2560, ge=32, description="model input long side at most")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        default="fp32",
        description="fp32; bf16 autocast; or auto: bf16 on GPUs and on CPUs with native bf16 (AVX-512 BF16, "
        "AMX), fp32 elsewhere",
    )
    fps: float | None = Field(
        default=None,
        gt=0,
        description=f"video: frames labeled per second of video, by timestamp (default {DEFAULT_VIDEO_FPS:g} unless "
        "--frame-stride is given)",
    )
    frame_stride: int | None = Field(
        default=None, ge=1, description="video: label every Nth decoded frame instead of sampling by time"
    )
    clip_length: int = Field(
        default=DEFAULT_CLIP_LENGTH,
        ge=1,
        le=256,
        description="video: sampled frames per clip, labeled together with proposals shared across them; "
        "an actor's memory grows with it (README: Labeling videos)",
    )
    storage_options: dict[str, Any] = STORAGE_OPTIONS
    overwrite: bool = Field(default=False, description="discard earlier results in --output")
    lease_seconds: float = Field(
        default=DEFAULT_LEASE_SECONDS,
        ge=2.0,
        le=86_400.0,
        description="a run holds --output with a lease it renews every quarter of this; another run "
        f"finding it held exits {OUTPUT_BUSY_EXIT}. A crashed run's lease lapses this long after its last "
        "renewal (at once on its own host)",
    )
    io_attempts: int = Field(
        default=4,
        ge=1,
        description="tries to read an input through transient failures (timeouts, throttling, 5xx, dropped "
        "connections), with exponential backoff from 0.5 s; what persists becomes a transient error row",
    )
    shared_local_paths: bool = Field(
        default=False,
        description="local paths are on a file system every node of the cluster mounts (NFS, ...); "
        "without it a local path on a multi-node cluster stops the job",
    )
    retry_errors: Literal["none", "transient", "all"] = Field(
        default="none",
        description="re-attempt earlier error rows of this kind (transient: I/O failures) and replace them",
    )
    max_error_ratio: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="exit 1 when more than this share of this run's images fail (the run still writes them all)",
    )
    preview: int = Field(
        default=0, ge=0, description="write N overlay PNGs to OUTPUT/_previews", json_schema_extra=_cli(metavar="N")
    )
    uncertainty_map: bool = Field(
        default=False,
        description="also store each row's per-pixel top-two margin as an 8-bit PNG (uncertainty_png)",
    )
    progress_every: float = Field(
        default=30.0, gt=0, description="seconds between progress lines (done/total, images/s, errors, time left)"
    )
    vocab_cache: Uri | None = Field(
        default=None,
        description="vocabulary embedding cache (default: $SAN_VOCAB_CACHE or ~/.cache/san-labeler/vocabularies)",
        json_schema_extra=_cli(metavar="URI"),
    )

    @model_validator(mode="after")
    def _check_concurrency(self) -> LabelJobConfig:
        if self.concurrency is not None:
            low, high = self.concurrency
            if not 1 <= low <= high:
                raise ValueError(f"concurrency {low},{high}: need 1 <= MIN <= MAX")
        if self.fps is not None and self.frame_stride is not None:
            raise ValueError("--fps and --frame-stride both given: sample video frames by time or by count, not both")
        return self

    @property
    def video_fps(self) -> float | None:
        """Frames per second sampled from videos (None when sampling by stride)."""
        return None if self.frame_stride is not None else (self.fps or DEFAULT_VIDEO_FPS)


class FinetuneConfig(_JobConfig):
    """`san finetune`: fine-tune SAN's side adapter with Ray Train; export a model for `san label`."""

    vocab: VocabRef = VOCAB
    train: Uri = Field(
        description="training pairs: manifest (.parquet/.csv with image_uri, label_uri), DATASET/images/<split>, "
        "or an annotation tool's export (COCO JSON, Label Studio JSON), categories matched by name",
        json_schema_extra=_cli(metavar="URI"),
    )
    val: Uri | None = Field(
        default=None, description="validation pairs, same forms as --train", json_schema_extra=_cli(metavar="URI")
    )
    image_root: Uri | None = Field(
        default=None,
        description="where the images an annotation export names must be (default: the export's own "
        "info.image_root, else its folder); an image outside it stops the import",
        json_schema_extra=_cli(metavar="URI"),
    )
    max_pixels: int = Field(
        default=MAX_PIXELS, ge=1, description="an annotation export declaring a larger image stops the import"
    )
    init: ModelChoice = Field(default_factory=ModelChoice, description="weights to start from")
    output: Uri = Field(
        description="run folder (local or s3://): Ray Train checkpoints and the exported model",
        json_schema_extra=_cli(metavar="URI", deprecated=["--storage"]),
    )
    workers: int = Field(default=1, ge=1, description="Ray Train workers (DDP ranks)")
    gpus_per_worker: float = Field(default=0.0, ge=0.0)
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    torch_threads: int | None = Field(
        default=None, ge=1, description="threads per CPU worker (default: --cpus-per-worker)"
    )
    max_steps: int | None = Field(default=None, ge=1, description="run length in steps (or --epochs)")
    epochs: int | None = Field(default=None, ge=1, description="run length in passes over --train (or --max-steps)")
    batch_size: int = Field(default=4, ge=1, description="global batch size, split evenly over the workers")
    lr: float = Field(default=1e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(default=1e-4, ge=0)
    grad_clip: float = Field(default=0.01, gt=0, description="full-model gradient-norm clip")
    crop_size: int = Field(default=640, ge=32, description="training crop; validation resizes the short side to it")
    augment: Literal["full", "none"] = Field(
        default="full",
        description="full: the published recipe (scale jitter, crop, flip, colour); none: short side resized to "
        "the crop and cropped, for fitting a few corrected images",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on a GPU of Ampere or later"
    )
    eval_every: int | None = Field(default=None, ge=1, description="validation mIoU every N steps (needs --val)")
    checkpoint_every: int = Field(default=500, ge=1)
    checkpoints_to_keep: int = Field(default=2, ge=1)
    log_every: int = Field(default=10, ge=1, description="print the loss every N steps")
    max_failures: int = Field(default=3, ge=0, description="worker-group restarts Ray Train may make")
    loaders: int = Field(default=2, ge=1, description="data-loading actors (decode + augment)")
    seed: int = 0
    resume: bool = Field(default=False, description="continue the run already in --output")
    storage_options: dict[str, Any] = STORAGE_OPTIONS

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give --max-steps or --epochs")
        if self.batch_size % self.workers:
            raise ValueError(f"--batch-size {self.batch_size} must be a multiple of --workers {self.workers}")
        if self.eval_every is not None and self.val is None:
            raise ValueError("--eval-every needs --val")
        return self

    @property
    def per_worker_batch_size(self) -> int:
        return self.batch_size // self.workers


class EvaluateRunConfig(_JobConfig):
    """`san evaluate run`: label a benchmark in its reference layout with the labeling job, then score it."""

    dataset: Literal["ade150", "ade847", "coco-stuff-171", "pc459", "pc59", "voc20"] = Field(
        description="the benchmark (its shipped vocabulary is used)"
    )
    input: Uri = Field(
        description="the DETECTRON2_DATASETS folder holding the benchmark",
        json_schema_extra=_cli(metavar="URI", deprecated=["--root"]),
    )
    output: Uri = Field(
        description="report folder: metrics.json, metrics.md, iou.png",
        json_schema_extra=_cli(metavar="URI", deprecated=["--report"]),
    )
    labels: Uri | None = Field(
        default=None, description="where the labels go (default: OUTPUT/labels)", json_schema_extra=_cli(metavar="URI")
    )
    weights: ModelChoice = Field(default_factory=ModelChoice)
    batch_size: int | None = BATCH_SIZE
    concurrency: tuple[int, int] | None = CONCURRENCY
    gpus_per_actor: float | None = GPUS_PER_ACTOR
    storage_options: dict[str, Any] = STORAGE_OPTIONS


class EvaluateScoreConfig(_JobConfig):
    """`san evaluate score`: score an existing labeling output against ground-truth label maps."""

    input: Uri = Field(
        description="the labeling output to score", json_schema_extra=_cli(metavar="URI", deprecated=["--labels"])
    )
    ground_truth: Uri = Field(
        description="folder of label maps, or a manifest with image_uri (or uri) and label_uri",
        json_schema_extra=_cli(metavar="URI"),
    )
    vocab: VocabRef = VOCAB
    output: Uri = Field(
        description="report folder: metrics.json, metrics.md, iou.png",
        json_schema_extra=_cli(metavar="URI", deprecated=["--report"]),
    )
    ignore_label: int = Field(default=255, description="ground-truth value that is not scored")
    storage_options: dict[str, Any] = STORAGE_OPTIONS


class ExportConfig(_JobConfig):
    """`san export`: a labeling output in a format annotation tools read."""

    format: Literal["coco", "label-studio", "cvat", "png", "vspw"] = Field(
        default="coco",
        description="coco: COCO JSON (RLE, or --polygons; video frames with video fields); label-studio: tasks "
        "with pre-annotations (brush masks, or --polygons) and the project's labeling config; cvat: COCO 1.0 "
        "with polygons for CVAT's import; png: a folder of label PNGs and a class table; vspw: videos' frames "
        "and label maps in the layout of the VSPW benchmark",
    )
    input: Uri = Field(description="the labeling output", json_schema_extra=_cli(metavar="URI"))
    output: Uri = Field(
        description="the file (coco, label-studio, cvat) or folder (png, vspw) to write (path or URI)",
        json_schema_extra=_cli(metavar="URI", deprecated=["--to"]),
    )
    vocab: VocabRef = VOCAB
    image_root: Uri | None = Field(
        default=None,
        description="write each image's file_name relative to this folder or prefix, as annotation tools expect "
        "(default: the full URI; for label-studio, local images become /data/local-files/?d= URLs under it)",
        json_schema_extra=_cli(metavar="URI"),
    )
    polygons: bool = Field(
        default=False, description="coco, label-studio: segments as polygons (a segment with a hole stays a mask)"
    )
    polygon_tolerance: float = POLYGON_TOLERANCE
    storage_options: dict[str, Any] = STORAGE_OPTIONS


class PushLabelStudioConfig(_JobConfig):
    """`san push label-studio`: a labeling output's predictions into a Label Studio server."""

    input: Uri = Field(description="the labeling output", json_schema_extra=_cli(metavar="URI"))
    vocab: VocabRef = VOCAB
    project: str = Field(
        min_length=3,
        max_length=50,
        description="the project's title (made with the labeling config of the taxonomy when missing); further "
        "projects, when one is full, are NAME-002, NAME-003, ...",
        json_schema_extra=_cli(metavar="NAME"),
    )
    url: str | None = Field(
        default=None,
        description="the Label Studio server (default: $LABEL_STUDIO_URL); the token is read from "
        "$LABEL_STUDIO_API_KEY, never from the command line",
        json_schema_extra=_cli(metavar="URL"),
    )
    max_tasks_per_project: int = Field(
        default=100_000, ge=1, description="tasks per project (Label Studio's guidance: about 100,000)"
    )
    batch_size: int = Field(default=250, ge=1, le=5000, description="tasks per import request")
    least_confident: int | None = Field(
        default=None, ge=1, description="push only the N least confident images (the review queue)"
    )
    where: str | None = Field(
        default=None,
        description="push only the rows this SQL condition over the row columns holds for (DuckDB), e.g. "
        '"uncertain_fraction > 0.2"',
        json_schema_extra=_cli(metavar="SQL"),
    )
    image_root: Uri | None = Field(
        default=None,
        description="local images become /data/local-files/?d= URLs relative to this folder (Label Studio's "
        "LOCAL_FILES_DOCUMENT_ROOT); object-store URIs are pushed as they are",
        json_schema_extra=_cli(metavar="URI"),
    )
    polygons: bool = Field(default=False, description="segments as polygons (a segment with a hole stays a mask)")
    polygon_tolerance: float = POLYGON_TOLERANCE
    storage_options: dict[str, Any] = STORAGE_OPTIONS


class ReportConfig(_JobConfig):
    """`san report`: a labeling output as one self-contained HTML page."""

    input: Uri = Field(description="the labeling output", json_schema_extra=_cli(metavar="URI"))
    output: Uri = Field(description="the HTML file to write (path or URI)", json_schema_extra=_cli(metavar="URI"))
    vocab: VocabRef = VOCAB
    evaluation: Uri | None = Field(
        default=None,
        description="a `san evaluate` report folder (metrics.json, confusion.npy) to include",
        json_schema_extra=_cli(metavar="URI"),
    )
    least_confident: int = Field(default=12, ge=0, description="how many of the least confident images to show")
    examples: int = Field(default=24, ge=0, description="how many classes to show an example of")
    storage_options: dict[str, Any] = STORAGE_OPTIONS
