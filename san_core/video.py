"""The journal (TPAMI) version of SAN on video: one set of mask proposals for a whole clip.

For a clip of L frames (all of one size, padded together as one batch):

    frames --CLIP + side adapter, per frame--> query tokens [L, Q, D], pixel tokens per frame
    all L*Q query tokens --k-means, K clusters--> centres [K, D]: the queries of every frame
    centres x each frame's pixel tokens --mask decoder--> mask logits [L, K, h, w], attention biases
    recognition head + classifier --> class logits [L, K, C+1] --mean over frames--> [K, C+1]
    per frame: softmax (background dropped) x sigmoid(mask) --> score maps [L, C, H_out, W_out]

Proposal k is the same proposal in every frame, and its class is judged on all frames at once.
The clustering is scikit-learn's KMeans, seeded as the published code seeds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .postprocess import (
    LabelTile,
    chunk_elements_for,
    nonzero_bands,
    pruned_tile_columns,
    query_anchors,
    resize_columns,
    resize_matrix,
    top_two_pruned,
)


def cluster_queries(queries: torch.Tensor, num_clusters: int, random_state: int = 0, n_init: int = 1) -> torch.Tensor:
    """queries [L, Q, D] -> centres [K, D]: KMeans over every frame's query tokens together, fed
    float32 on the CPU as the reference feeds it."""
    from sklearn.cluster import KMeans

    tokens = queries.reshape(-1, queries.shape[-1]).detach().float().cpu().numpy()
    if num_clusters > len(tokens):
        raise ValueError(f"{num_clusters} clusters for {len(tokens)} query tokens: the clip is too short")
    fit = KMeans(n_clusters=num_clusters, random_state=random_state, n_init=n_init).fit(tokens)
    return torch.from_numpy(fit.cluster_centers_).to(queries)


def frame_masks(mask_logits: torch.Tensor, padded_size: tuple[int, int], input_size: tuple[int, int]) -> torch.Tensor:
    """Mask probabilities [K, H, W] at the frame's own size: logits [K, h, w] resized to the padded
    size, cropped to the frame, then the sigmoid (the reference's video order)."""
    masks = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    return masks[:, : input_size[0], : input_size[1]].sigmoid()


def frame_scores(
    class_probs: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
) -> torch.Tensor:
    """One frame's score maps [C, H_out, W_out] from the clip's class probabilities [K, C] and the
    frame's mask logits [K, h, w]. In the reference's order for video: masks to the padded size,
    cropped, sigmoid, combined with the classes, and only then resized to the output size."""
    masks = frame_masks(mask_logits, padded_size, input_size)
    scores = torch.einsum("kc,khw->chw", class_probs.to(masks), masks)
    return F.interpolate(scores[None], size=output_size, mode="bilinear", align_corners=False)[0]


def resize_taps(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch's linear resize (align_corners=False, no antialias) as two taps per output position:
    (index, index, weight, weight), each [size_out], the heavier tap first, read off
    `resize_matrix` so the weights are the very ones `F.interpolate` uses."""
    weights, indices = resize_matrix(size_in, size_out).topk(min(2, size_in), dim=1)
    if size_in == 1:
        weights, indices = torch.cat([weights, torch.zeros_like(weights)], 1), torch.cat([indices, indices], 1)
    # a tap of weight 0 (an output on an input position) would name any input: name the other
    # tap's, so that the rows a tile reads stay next to its own
    second = torch.where(weights[:, 1] > 0, indices[:, 1], indices[:, 0])
    return indices[:, 0], second, weights[:, 0], weights[:, 1]


@torch.no_grad()
def frame_label_tiles(
    class_probs: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    max_chunk_elements: int | None = None,
) -> Iterator[LabelTile]:
    """The argmax of `frame_scores` and its value, tile by tile, never holding [C, H_out, W_out].

    In the reference's video order the sigmoid comes between two resizes: mask logits up to the
    padded size (then cropped to the frame), the sigmoid, and the last resize to the output size.
    Both resizes are linear. Per tile of output rows, the frame rows its taps need are made at
    once as one product with the small upsampling matrix, over only the grid rows they
    interpolate (pixel-major, [rows, W, K]), then the sigmoid, then the last resize as two taps
    along the rows and two along the columns (`resize_taps`, applied to the masks: it commutes
    with mixing the classes), and the scores as [pixels, K] x [K, C], pruned exactly as the image
    path's are (`top_two_pruned`): all these resizes take convex combinations, so no mask value
    in a tile exceeds the sigmoid of the largest grid value its frame rows come from.
    """
    clusters, grid_h, grid_w = mask_logits.shape
    max_chunk_elements = max_chunk_elements or chunk_elements_for(mask_logits.device)
    device, dtype = mask_logits.device, mask_logits.dtype
    in_h, in_w = input_size
    out_h, out_w = output_size
    up_y = resize_matrix(grid_h, padded_size[0])[:in_h]  # [H, h]: upsample, crop
    band_first, band_end = nonzero_bands(up_y)
    up_y = up_y.to(device, dtype)
    up_x = resize_matrix(grid_w, padded_size[1])[:in_w].to(device, dtype)  # [W, w]
    half = resize_columns(mask_logits, up_x)  # [h, W*K]
    y0, y1, wy0, wy1 = (t.to(device) for t in resize_taps(in_h, out_h))
    x0, x1, wx0, wx1 = (t.to(device) for t in resize_taps(in_w, out_w))
    wy0, wy1, wx0, wx1 = (w.to(dtype) for w in (wy0, wy1, wx0, wx1))
    probs = class_probs.to(device, dtype).contiguous()  # [K, C]
    mass = probs.sum(dim=1)  # [K] each cluster's probability over the vocabulary
    anchors = query_anchors(probs)
    per_row = pruned_tile_columns(clusters, probs.shape[1], anchors) * max(out_w, in_w)
    rows = max(1, max_chunk_elements // max(1, per_row))
    for top in range(0, out_h, rows):
        ys = slice(top, min(out_h, top + rows))
        taps = torch.cat([y0[ys], y1[ys]])  # (the heavier tap first: either may be the lower row)
        first, last = int(taps.min()), int(taps.max())
        grid_first, grid_end = min(band_first[first : last + 1]), max(band_end[first : last + 1])
        masks = up_y[first : last + 1, grid_first:grid_end] @ half[grid_first:grid_end]  # the frame rows needed
        masks = masks.view(-1, in_w, clusters).sigmoid_()
        tile = (masks[y0[ys] - first] * wy0[ys, None, None]).addcmul_(masks[y1[ys] - first], wy1[ys, None, None])
        tile = (tile[:, x0] * wx0[None, :, None]).addcmul_(tile[:, x1], wx1[None, :, None])  # [rows, W_out, K]
        # every mask value in the tile is a convex combination of these grid values, after the sigmoid
        ceiling = half[grid_first:grid_end].view(-1, clusters).amax(dim=0).sigmoid()  # [K]
        best, index, runner_up = top_two_pruned(tile.view(-1, clusters), probs, ceiling, anchors, max_chunk_elements)
        shape = (ys.stop - ys.start, out_w)
        totals = torch.mv(tile.view(-1, clusters), mass).view(shape)
        yield LabelTile(top, 0, index.view(shape), best.view(shape), runner_up.view(shape), totals)


@dataclass
class ClipLabels:
    """What a clip is labeled with (labels are class indices, 0..C-1)."""

    labels: list[int]  # every class that wins a pixel in some frame, ascending
    # Per label: the mean over frames of its mean score inside its mask. As in the reference, a
    # frame the label is absent from contributes NaN (its code assumes every label is in every frame).
    scores: list[float]
    masks: torch.Tensor  # [labels, L, H_out, W_out] bool: the label's pixels in every frame


def clip_labels(score_maps: torch.Tensor) -> ClipLabels:
    """score_maps [L, C, H, W] -> the clip's labels, their scores and masks (per-pixel argmax)."""
    label_maps = score_maps.argmax(dim=1)  # [L, H, W]
    labels = torch.unique(label_maps).tolist()
    scores, masks = [], []
    for label in labels:
        mask = label_maps == label
        per_frame = [score_maps[i, label][mask[i]].mean().item() for i in range(len(mask))]
        scores.append(sum(per_frame) / len(per_frame))
        masks.append(mask)
    shape = (0, *label_maps.shape)
    return ClipLabels(labels, scores, torch.stack(masks) if masks else torch.zeros(shape, dtype=torch.bool))
