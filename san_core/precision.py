"""Inference precision: fp32, bf16 autocast, or auto (bf16 where the hardware runs it natively).

Under bf16 autocast the matrix products of CLIP, the side adapter and the recognition head run in
bfloat16; the mask and class logits they produce are turned back to float32 before the label
maps are made, so post-processing is the same in both modes.

Autocast casts a layer's fp32 weights to bf16 each time they are used, and keeps the casts only
until its context ends, so every call pays for casting the whole network again: on a CPU with AMX
that took longer than the bf16 products themselves. `Bf16Weights` makes those casts once and
lends them to the layers for each call; the products see the very same bf16 values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .derived_cache import parameter_state

PRECISIONS = ("fp32", "bf16", "auto")


@lru_cache(maxsize=1)
def cpu_runs_bf16_natively() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX), from /proc/cpuinfo's flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


# NVIDIA cards before Ampere, by the names Ray gives them (its `accelerator_type:<name>` node
# resources): they have no bf16 arithmetic, so autocast would emulate it there.
GPUS_WITHOUT_BF16 = frozenset({"K80", "M60", "P4", "P40", "P100", "V100", "T4"})


def gpu_runs_bf16_natively(gpu_types: Iterable[str] | None = None, device: torch.device | None = None) -> bool:
    """Whether the GPUs run bf16 natively: no card named in `gpu_types` (a cluster's cards, which
    the caller cannot see) predates Ampere; without names, this process's CUDA `device` has
    compute capability 8.0 or more; with neither, assumed so."""
    names = set(gpu_types or ())
    if names:
        return not names & GPUS_WITHOUT_BF16
    if torch.cuda.is_available():
        return torch.cuda.get_device_capability(device)[0] >= 8
    return True


def resolve_precision(precision: str, device: str | torch.device, gpu_types: Iterable[str] | None = None) -> str:
    """fp32 or bf16 for `device`: auto is bf16 on a GPU that runs it natively (by `gpu_types`, the
    cluster's card names, where given) and on a CPU with native bf16, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    target = torch.device(device)
    if target.type == "cuda":
        return "bf16" if gpu_runs_bf16_natively(gpu_types, target) else "fp32"
    return "bf16" if target.type == "cpu" and cpu_runs_bf16_natively() else "fp32"


# Layers whose parameters enter only matrix products, which autocast runs in bf16: it would cast
# these parameters on every use. Of `nn.MultiheadAttention`, only its input projections (its
# output projection is an `nn.Linear`; `bias_k` and `bias_v` are concatenated, not multiplied).
MATRIX_PRODUCT_LAYERS = (nn.Linear, nn.Conv2d)
INPUT_PROJECTIONS = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _matrix_product_parameters(layer: nn.Module) -> list[nn.Parameter]:
    if isinstance(layer, MATRIX_PRODUCT_LAYERS):
        return list(layer.parameters(recurse=False))
    if isinstance(layer, nn.MultiheadAttention):
        return [p for name, p in layer.named_parameters(recurse=False) if name in INPUT_PROJECTIONS]
    return []


class Bf16Weights:
    """bf16 copies of the parameters of `modules`' matrix-product layers, made once and remade
    only when a parameter changes (a new tensor, or an in-place update such as an optimiser step
    or `load_state_dict`)."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        found: dict[int, nn.Parameter] = {}
        for module in modules:
            for layer in module.modules():
                found.update((id(p), p) for p in _matrix_product_parameters(layer))
        self.parameters = list(found.values())
        self._key: tuple | None = None
        self._copies: list[torch.Tensor] = []

    def _state(self) -> tuple:
        return parameter_state(self.parameters)

    @contextlib.contextmanager
    def lent(self) -> Iterator[None]:
        """The layers hold their bf16 copies inside this context, their own tensors again after.
        For inference: a backward pass through outputs made inside it would see the copies."""
        state = self._state()
        if state != self._key:
            with torch.no_grad():
                self._copies = [p.detach().to(torch.bfloat16) for p in self.parameters]
            self._key = state
        originals = [p.data for p in self.parameters]
        try:
            for parameter, copy in zip(self.parameters, self._copies, strict=True):
                parameter.data = copy
            yield
        finally:
            for parameter, original in zip(self.parameters, originals, strict=True):
                parameter.data = original


def inference_autocast(
    precision: str, device: str | torch.device, weights: Bf16Weights | None = None
) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved or requested precision on `device`; under bf16,
    `weights` (if given) lends its layers their bf16 copies for the context's duration."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16))
    if weights is not None:
        stack.enter_context(weights.lent())
    return stack
