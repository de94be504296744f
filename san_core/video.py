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

from .postprocess import LabelTile, chunk_elements_for, resize_matrix


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

    The sigmoid masks are made once at the frames' own size ([K, H, W]); the last resize is linear,
    so each output tile's masks are A_y @ sigmoid_mask_k @ A_x^T for the tile's rows of the resize
    matrices, and its scores the classes' mix of those.
    """
    masks = frame_masks(mask_logits, padded_size, input_size)  # [K, H, W]
    max_chunk_elements = max_chunk_elements or chunk_elements_for(masks.device)
    clusters, height, _ = masks.shape
    out_h, out_w = output_size
    a_y = resize_matrix(input_size[0], out_h).to(masks)
    a_x = resize_matrix(input_size[1], out_w).to(masks)
    probs_t = class_probs.to(masks).T.contiguous()  # [C, K]
    cols = max(1, min(out_w, max_chunk_elements // max(1, clusters * height)))
    for left in range(0, out_w, cols):
        right = min(out_w, left + cols)
        half = torch.einsum("khw,xw->khx", masks, a_x[left:right])  # [K, H, cols]
        width = right - left
        rows = max(1, max_chunk_elements // max(1, max(probs_t.shape[0], clusters) * width))
        for top in range(0, out_h, rows):
            bottom = min(out_h, top + rows)
            tile = torch.einsum("yh,khx->kyx", a_y[top:bottom], half).reshape(clusters, -1)
            best, index = (probs_t @ tile).max(dim=0)
            yield LabelTile(top, left, index.view(bottom - top, width), best.view(bottom - top, width))


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
