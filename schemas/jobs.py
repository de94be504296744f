"""Configs of the command-line jobs: what `jobs/label.py` and `jobs/finetune.py` parse flags into."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ModelChoice(_JobConfig):
    """Which SAN weights: a preset name, or a checkpoint URI (with an optional config file)."""

    model: str | None = Field(default=None, description="preset: san-vit-b16 or san-vit-l14-336")
    checkpoint: str | None = Field(default=None, description="checkpoint path or fsspec URI")
    model_config_uri: str | None = Field(default=None, description="JSON model config for a checkpoint without one")

    @classmethod
    def from_flags(cls, model: str | None, checkpoint: str | None, model_config: str | None) -> ModelChoice:
        """--model / --checkpoint / --model-config as the jobs take them; san-vit-b16 by default."""
        return cls(
            model=model or (None if checkpoint else "san-vit-b16"), checkpoint=checkpoint, model_config_uri=model_config
        )

    @classmethod
    def from_init(cls, init: str, init_config: str | None) -> ModelChoice:
        """--init as the fine-tuning job takes it: a preset name (no '/', '.' or ':'), else a checkpoint."""
        if any(c in init for c in "/.:"):
            return cls(checkpoint=init, model_config_uri=init_config)
        return cls(model=init, model_config_uri=init_config)

    @model_validator(mode="after")
    def _one_source(self) -> ModelChoice:
        if self.model is None and self.checkpoint is None:
            raise ValueError("give --model NAME or --checkpoint URI")
        if self.model_config_uri is not None and self.checkpoint is None:
            raise ValueError("--model-config only applies to --checkpoint")
        return self


class LabelJobConfig(_JobConfig):
    vocab: str = Field(description="taxonomy.yaml path/URI, or a shipped vocabulary name")
    input: str = Field(description="directory/prefix, glob, or manifest (.txt/.csv/.parquet with a uri column)")
    output: str = Field(description="output directory/prefix for Parquet, previews and _manifest.json")
    weights: ModelChoice
    batch_size: int = Field(default=4, ge=1)
    concurrency: tuple[int, int] = Field(default=(1, 1), description="actor pool size: min, max (autoscaling)")
    gpus_per_actor: float | None = Field(
        default=None, ge=0.0, description="GPUs per actor, fractions allowed; default 1 if the cluster has GPUs, else 0"
    )
    torch_threads: int | None = Field(default=None, ge=1, description="threads per actor; default: node CPUs / actors")
    rows_per_file: int = Field(default=256, ge=1, description="images per output Parquet file (the resume unit)")
    max_pixels: int = Field(default=100_000_000, ge=1, description="larger images become error rows")
    short_side: int = Field(default=640, ge=32, description="resize short side (the reference test size)")
    max_long_side: int = Field(default=2560, ge=32)
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")
    overwrite: bool = False
    max_error_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0, description="fail the run above this share of bad inputs"
    )
    preview: int = Field(default=0, ge=0, description="overlay PNGs to write for people to look at")
    vocab_cache: str | None = Field(default=None, description="vocabulary cache URI (default: local cache dir)")

    @model_validator(mode="after")
    def _check_concurrency(self) -> LabelJobConfig:
        low, high = self.concurrency
        if not 1 <= low <= high:
            raise ValueError(f"concurrency {low},{high}: need 1 <= MIN <= MAX")
        return self


class FinetuneConfig(_JobConfig):
    """What `jobs/finetune.py` runs: data, starting weights, recipe, and where checkpoints go."""

    vocab: str = Field(description="taxonomy.yaml path/URI, or a shipped vocabulary name")
    train: str = Field(description="manifest (.parquet/.csv with image_uri, label_uri) or an .../images/<split> folder")
    val: str | None = Field(default=None, description="validation pairs, same forms as train")
    init: ModelChoice = Field(description="weights to start from: a preset or a full checkpoint")
    storage: str = Field(description="run folder (local or s3://): Ray Train checkpoints and the exported model")
    workers: int = Field(default=1, ge=1, description="Ray Train workers (DDP ranks)")
    gpus_per_worker: float = Field(default=0.0, ge=0.0)
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    torch_threads: int | None = Field(default=None, ge=1, description="threads per CPU worker; default cpus_per_worker")
    max_steps: int | None = Field(default=None, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=4, ge=1, description="global batch size, split evenly over the workers")
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    grad_clip: float = Field(default=0.01, gt=0, description="full-model gradient-norm clip")
    crop_size: int = Field(default=640, ge=32, description="training crop; validation resizes the short side to it")
    precision: Literal["auto", "fp32", "bf16"] = Field(default="auto", description="auto: bf16 autocast on GPU")
    eval_every: int | None = Field(default=None, ge=1, description="validation mIoU every N steps (needs val)")
    checkpoint_every: int = Field(default=500, ge=1)
    checkpoints_to_keep: int = Field(default=2, ge=1)
    log_every: int = Field(default=10, ge=1)
    max_failures: int = Field(default=3, ge=0, description="worker-group restarts Ray Train may make")
    loaders: int = Field(default=2, ge=1, description="data-loading actors (decode + augment)")
    seed: int = 0
    resume: bool = Field(default=False, description="continue the run already in storage")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")

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
