"""One fine-tuning step of SAN: training forward, the set loss, backward, clipping, optimiser step.

Used by the distributed loop (`pipeline/finetune.py`) and by the training benchmark alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from .criterion import SetCriterion, Target
from .model import SAN
from .optim import clip_full_model_gradients


class TrainingForward(nn.Module):
    """SAN's training forward exposed as `forward`.

    DistributedDataParallel synchronises gradients only for calls that go through the wrapped
    module's `forward`, so this is the module DDP wraps. `san` keeps the checkpoint's tensor names.
    """

    def __init__(self, san: SAN) -> None:
        super().__init__()
        self.san = san

    def forward(
        self, images: Sequence[torch.Tensor], class_embeddings: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.san.forward_train(images, class_embeddings)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (None: full fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def training_step(
    network: nn.Module,
    san: SAN,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: Sequence[torch.Tensor],
    targets: list[Target],
    class_embeddings: torch.Tensor,
    grad_clip: float,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One optimiser step on this worker's images (RGB float [3, S, S], 0..255).

    `network` is what runs the forward (`TrainingForward`, possibly DDP-wrapped); `san` is the
    bare model whose gradients are clipped. Returns every loss term, the gradient norm before
    clipping and the learning rate used.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(san.device, autocast_dtype):
        outputs = network(images, class_embeddings)
    losses = criterion(outputs, targets)  # computed in fp32
    losses["loss"].backward()
    grad_norm = clip_full_model_gradients(san, grad_clip)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    result = {name: float(value.detach()) for name, value in losses.items()}
    result["grad_norm"] = float(grad_norm)
    result["lr"] = float(lr)
    return result
