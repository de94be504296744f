"""Which SAN weights a job runs, resolved once in the driver and loaded by every actor or worker:
a checkpoint URI, a preset's published file, or (quick start only) random smoke-test weights."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from san_core.build import build_empty, build_model, load_model
from san_core.checkpoint import CheckpointError, load_into
from san_core.hub import WeightsUnavailableError, fetch_published_checkpoint
from san_core.model import SAN
from san_core.presets import PRESETS, get_preset
from schemas.jobs import ModelChoice
from schemas.model_config import SanModelConfig

log = logging.getLogger(__name__)

SMOKE_BANNER = "SMOKE TEST: RANDOM WEIGHTS, LABELS MEANINGLESS"


@dataclass(frozen=True)
class SharedWeights:
    """Weights as the driver loaded them, for the object store: every actor of a job builds its
    model from this one copy instead of fetching the checkpoint again on its own node."""

    config: SanModelConfig
    state: dict[str, np.ndarray]

    @classmethod
    def of(cls, model: SAN) -> SharedWeights:
        return cls(model.config, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})

    def build(self, device: str = "cpu") -> SAN:
        model = build_empty(self.config, device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only object-store memory; copied, not written
            load_into(model, {k: torch.from_numpy(v).to(device) for k, v in self.state.items()}, source="the driver")
        return model.eval()


class WeightsError(RuntimeError):
    """The requested weights cannot be used; nothing has been processed."""


@dataclass(frozen=True)
class WeightsSpec:
    """How an actor (or the driver) gets the model: a checkpoint URI, a preset's published file
    (fetched on each node into its own cache), or random smoke-test weights."""

    model_id: str
    checkpoint: str | None = None
    model_config_uri: str | None = None
    preset: str | None = None
    random: bool = False  # set only for the quick-start smoke test
    storage_options: Mapping[str, Any] | None = None

    def load(self, device: str = "cpu") -> tuple[SAN, str | None]:
        """The model and its checkpoint's sha256 (None for random weights)."""
        if self.random:
            torch.manual_seed(0)  # every actor builds the same random model
            return build_model(get_preset(self.model_id).config, device), None
        checkpoint = fetch_published_checkpoint(self.preset) if self.preset else self.checkpoint
        loaded = load_model(
            checkpoint=checkpoint,
            model_config=self.model_config_uri,
            storage_options=self.storage_options,
            device=device,
        )
        return loaded.model, loaded.checkpoint_digest

    def load_checked(self, device: str = "cpu") -> tuple[SAN, str | None]:
        """`load`, with an unusable checkpoint reported as a WeightsError."""
        try:
            return self.load(device)
        except CheckpointError as e:
            raise WeightsError(str(e)) from e


def resolve_weights(
    choice: ModelChoice, storage_options: Mapping[str, Any], smoke_if_no_weights: bool = False
) -> WeightsSpec:
    """The weights the workers will load; for a preset, its published file (downloaded once)."""
    if choice.checkpoint is not None:
        return WeightsSpec(
            choice.checkpoint, choice.checkpoint, choice.model_config_uri, storage_options=storage_options
        )
    assert choice.model is not None
    if choice.model not in PRESETS:
        raise WeightsError(f"unknown model {choice.model!r}; known: {', '.join(PRESETS)}")
    try:
        fetch_published_checkpoint(choice.model)  # here, to fail early; each node fetches its own copy
    except WeightsUnavailableError as e:
        if not smoke_if_no_weights:
            raise WeightsError(str(e)) from e
        log.warning("%s", e)
        log.warning(
            "%s\n%s: no published weights for %s, labeling with random weights.\n"
            "The pipeline is exercised end to end; the labels mean nothing.\n%s",
            "*" * 78,
            SMOKE_BANNER,
            choice.model,
            "*" * 78,
        )
        return WeightsSpec(choice.model, random=True)
    return WeightsSpec(choice.model, preset=choice.model)
