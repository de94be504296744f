"""Turn per-query outputs into per-class score maps, exactly as the reference's inference."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def crop_and_resize(maps: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> torch.Tensor:
    """maps: [N, H_pad, W_pad] -> crop the padding to input_size, bilinear resize to output_size."""
    cropped = maps[:, : input_size[0], : input_size[1]]
    return F.interpolate(cropped[None], size=output_size, mode="bilinear", align_corners=False)[0]


def semantic_scores(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
) -> torch.Tensor:
    """class_logits: [Q, C+1] (background last); mask_logits: [Q, H_pad, W_pad] at padded input size.

    Returns [C, H_out, W_out]: sum over queries of softmax class probability (background
    dropped) x sigmoid mask probability. Masks are cropped and resized before the sigmoid.
    """
    masks = crop_and_resize(mask_logits, input_size, output_size).sigmoid()
    probs = F.softmax(class_logits, dim=-1)[..., :-1].to(masks)
    return torch.einsum("qc,qhw->chw", probs, masks)
