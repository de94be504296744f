"""The published fine-tuning optimiser: AdamW, no weight decay on embeddings and norms, poly LR,
and gradient clipping on the whole model's norm."""

from __future__ import annotations

import torch
from torch import nn

# Parameter-name fragments the reference excludes from weight decay (its WEIGHT_DECAY_EMBED_GROUP).
NO_DECAY_EMBEDDINGS = (
    "absolute_pos_embed",
    "positional_embedding",
    "pos_embed",
    "query_embed",
    "relative_position_bias_table",
)
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group and a no-decay group (embeddings, norms)."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if id(parameter) in no_decay or any(fragment in name for fragment in NO_DECAY_EMBEDDINGS):
            plain.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float = 1e-4, weight_decay: float = 1e-4) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)


def poly_schedule(
    optimizer: torch.optim.Optimizer, max_steps: int, power: float = 0.9
) -> torch.optim.lr_scheduler.LambdaLR:
    """lr = base_lr * (1 - step / max_steps) ** power, reaching 0 at max_steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / max_steps) ** power)


def clip_full_model_gradients(model: nn.Module, max_norm: float = 0.01) -> torch.Tensor:
    """Clip the L2 norm of all gradients together (the reference's "full_model" clipping)."""
    return torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm, 2.0)
