"""Configs of the command-line jobs: what `jobs/label.py` and `jobs/finetune.py` parse flags into."""

from __future__ import annotations

from typing import Any

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
    vocab: str
    train: str = Field(description="manifest (.parquet/.csv with image_uri, label_uri) or dataset folder")
    val: str | None = None
    init: str = Field(default="san-vit-b16", description="preset name or checkpoint URI to start from")
    storage: str = Field(description="Ray Train storage path (local or s3://) for checkpoints")
    workers: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0.0)
    max_steps: int | None = Field(default=None, ge=1)
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=4, ge=1, description="global batch size")
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    grad_clip: float = Field(default=0.01, gt=0)
    crop_size: int = Field(default=640, ge=32)
    eval_every: int | None = Field(default=None, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    resume: bool = False
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_length(self) -> FinetuneConfig:
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give --max-steps or --epochs")
        return self
