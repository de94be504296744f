"""Build SAN models from configs and load them from checkpoints (presets, paths or URIs)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import torch

from schemas.model_config import SanModelConfig

from .checkpoint import CheckpointError, LoadedCheckpoint, load_into, read_checkpoint
from .hub import fetch_published_checkpoint
from .model import SAN
from .presets import PRESETS, get_preset


def build_model(config: SanModelConfig, device: str | torch.device = "cpu") -> SAN:
    """A SAN with random weights (use `load_model` for real ones). `device="meta"` builds shapes only."""
    with torch.device(device):
        model = SAN(config)
    return model.eval()


def build_empty(config: SanModelConfig, device: str | torch.device = "cpu") -> SAN:
    """A SAN whose parameters are uninitialised memory, to be filled from a checkpoint (fast)."""
    model = build_model(config, "meta").to_empty(device=device)
    model.reset_buffers()
    return model


def read_model_config(uri: str, storage_options: Mapping[str, Any] | None = None) -> SanModelConfig:
    with fsspec.open(uri, "r", **(storage_options or {})) as f:
        return SanModelConfig.model_validate(json.load(f))


def infer_preset(checkpoint: LoadedCheckpoint) -> str | None:
    """The preset whose tensor names and shapes the checkpoint matches exactly, if any."""
    shapes = {k: tuple(v.shape) for k, v in checkpoint.state_dict.items()}
    for name, preset in PRESETS.items():
        model_shapes = {k: tuple(v.shape) for k, v in build_model(preset.config, "meta").state_dict().items()}
        if model_shapes == shapes:
            return name
    return None


@dataclass
class LoadedModel:
    model: SAN
    config: SanModelConfig
    model_id: str  # preset name or checkpoint URI
    checkpoint_digest: str


def load_model(
    model: str | None = None,
    checkpoint: str | None = None,
    model_config: str | SanModelConfig | None = None,
    storage_options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> LoadedModel:
    """Load SAN weights: a preset name (`san-vit-b16`) or a checkpoint URI, with its config from
    (in order) `model_config`, the checkpoint's own metadata, the named preset, or the preset whose
    shapes the checkpoint matches."""
    if checkpoint is None:
        if model is None:
            raise ValueError("give a model name (--model) or a checkpoint (--checkpoint)")
        get_preset(model)
        checkpoint = fetch_published_checkpoint(model, cache_dir=cache_dir)
    loaded = read_checkpoint(checkpoint, storage_options)

    if isinstance(model_config, str):
        config = read_model_config(model_config, storage_options)
    elif model_config is not None:
        config = model_config
    elif loaded.config is not None:
        config = loaded.config
    elif model is not None:
        config = get_preset(model).config
    else:
        inferred = infer_preset(loaded)
        if inferred is None:
            raise CheckpointError(
                f"{checkpoint} carries no model config and matches no preset ({', '.join(PRESETS)}); "
                "pass its config with --model-config FILE"
            )
        config = get_preset(inferred).config
        model = inferred

    san = build_empty(config, device)
    load_into(san, {k: v.to(device) for k, v in loaded.state_dict.items()}, source=checkpoint)
    san.eval()
    return LoadedModel(san, config, model or checkpoint, loaded.digest)
