"""Inference precision: fp32, bf16 autocast, or auto (bf16 where the hardware runs it natively).

Under bf16 autocast the matrix products of CLIP, the side adapter and the recognition head run in
bfloat16; the mask and class logits they produce are turned back to float32 before the label
maps are made, so post-processing is the same in both modes.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

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


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """fp32 or bf16 for `device`: auto is bf16 on a GPU (every GPU the project targets has bf16)
    and on a CPU with native bf16, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    return "bf16" if kind == "cuda" or (kind == "cpu" and cpu_runs_bf16_natively()) else "fp32"


def inference_autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved or requested precision on `device`."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
