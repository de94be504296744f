"""Turn per-query outputs into per-class score maps and label maps, as the reference's inference.

The reference upsamples the mask logits to the padded input size, crops the padding, resizes to
the requested output size (both bilinear), applies the sigmoid and sums softmax class
probabilities (background dropped) times mask probabilities over queries.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def semantic_scores(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    background: bool = True,
) -> torch.Tensor:
    """class_logits [Q, C(+1)], mask_logits [Q, h, w] (side-adapter grid) -> scores [C, H_out, W_out]."""
    masks = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    masks = masks[:, :, : input_size[0], : input_size[1]]
    masks = F.interpolate(masks, size=output_size, mode="bilinear", align_corners=False)[0].sigmoid()
    probs = _class_probs(class_logits, background).to(masks)
    return torch.einsum("qc,qhw->chw", probs, masks)


def _class_probs(class_logits: torch.Tensor, background: bool) -> torch.Tensor:
    probs = F.softmax(class_logits, dim=-1)
    return probs[..., :-1] if background else probs


def resize_matrix(size_in: int, size_out: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[size_out, size_in] weights of PyTorch's linear interpolation (align_corners=False)."""
    eye = torch.eye(size_in, dtype=dtype)[None]  # channel i holds the unit impulse at i
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[0].T


def composite_resize_matrix(grid: int, padded: int, valid: int, output: int) -> torch.Tensor:
    """One axis of upsample(grid -> padded), crop to `valid`, resize(valid -> output): [output, grid]."""
    return resize_matrix(valid, output) @ resize_matrix(grid, padded)[:valid]


def semantic_labels(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    background: bool = True,
    max_chunk_elements: int = 1 << 25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The argmax of `semantic_scores` and its value, without materialising [C, H_out, W_out].

    Both bilinear resizes are linear maps per axis, so the mask logits at the output size are
    A_y @ M_q @ A_x^T with small composite matrices; rows are produced in chunks.

    Large vocabularies are pruned exactly: a class's score at any pixel is at most the sum of its
    probabilities over queries (masks are <= 1), so in each chunk only classes whose sum reaches
    the best score the queries' own top classes already achieve everywhere in the chunk can win.

    Returns labels [H_out, W_out] (int64 class indices) and their scores [H_out, W_out].
    """
    queries, grid_h, grid_w = mask_logits.shape
    out_h, out_w = output_size
    dtype, device = mask_logits.dtype, mask_logits.device
    a_y = composite_resize_matrix(grid_h, padded_size[0], input_size[0], out_h).to(device, dtype)
    a_x = composite_resize_matrix(grid_w, padded_size[1], input_size[1], out_w).to(device, dtype)
    half = torch.einsum("qhw,xw->qhx", mask_logits, a_x)  # [Q, h, W_out]
    probs_t = _class_probs(class_logits, background).to(dtype).T.contiguous()  # [C, Q]
    num_classes = probs_t.shape[0]
    upper_bound = probs_t.sum(dim=1)  # [C] score can never exceed this
    anchors = torch.unique(probs_t.argmax(dim=0))  # each query's most likely class
    rows = max(1, max_chunk_elements // max(1, num_classes * out_w))
    labels = torch.empty(out_h, out_w, dtype=torch.int64, device=device)
    scores = torch.empty(out_h, out_w, dtype=dtype, device=device)
    for top in range(0, out_h, rows):
        bottom = min(out_h, top + rows)
        masks = torch.einsum("yh,qhx->qyx", a_y[top:bottom], half).sigmoid().reshape(queries, -1)
        floor = (probs_t[anchors] @ masks).max(dim=0).values.min()  # every pixel scores at least this
        # the slack covers float rounding of the bound; it only ever keeps more classes
        candidates = torch.nonzero(upper_bound >= floor - 1e-5).squeeze(1)
        best, index = (probs_t[candidates] @ masks).max(dim=0)
        labels[top:bottom] = candidates[index].view(bottom - top, out_w)
        scores[top:bottom] = best.view(bottom - top, out_w)
    return labels, scores
