"""Pure functions from a label map to the segments an output row stores (COCO RLE), and back.

COCO's RLE runs down columns (Fortran order). Rather than one full-size mask per class, the runs
of every class are found in one pass over the label map, a block of columns at a time, so a
100-megapixel map needs no more than a few copies of one column block besides itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pycocotools import mask as coco_mask

from schemas.output import Segment

_BLOCK_PIXELS = 1 << 23  # pixels of one column block while finding runs


def label_runs(label_map: np.ndarray, block_pixels: int = _BLOCK_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """The map in column-major order as runs: (values [R], lengths [R]); neighbours differ."""
    height, width = label_map.shape
    block_cols = max(1, block_pixels // max(1, height))
    values: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    for left in range(0, width, block_cols):
        flat = np.ascontiguousarray(label_map[:, left : left + block_cols].T).ravel()  # column-major
        if flat.size == 0:
            continue
        starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
        block_values = flat[starts]
        block_lengths = np.diff(np.append(starts, flat.size))
        if values and values[-1][-1] == block_values[0]:  # a run that goes on into this block
            lengths[-1][-1] += block_lengths[0]
            block_values, block_lengths = block_values[1:], block_lengths[1:]
        if block_values.size:
            values.append(block_values)
            lengths.append(block_lengths.astype(np.int64))
    if not values:
        return np.zeros(0, dtype=label_map.dtype), np.zeros(0, dtype=np.int64)
    return np.concatenate(values), np.concatenate(lengths)


def class_rles(label_map: np.ndarray) -> dict[int, dict]:
    """class id -> COCO compressed RLE of its mask, for every id present, equal to encoding
    `label_map == id` with pycocotools."""
    height, width = label_map.shape
    values, lengths = label_runs(label_map)
    ends = np.cumsum(lengths)
    # each class's runs together, in pixel order: one sort rather than a scan of all runs per class
    order = np.argsort(values, kind="stable")
    classes, firsts = np.unique(values[order], return_index=True)
    lengths, ends = lengths[order], ends[order]
    previous_ends = np.empty_like(ends)  # where the run before, of the same class, ended
    previous_ends[1:] = ends[:-1]
    previous_ends[firsts] = 0
    gaps = ends - lengths - previous_ends  # the zeros before each run
    rles = {}
    for class_id, first, last in zip(classes.tolist(), firsts, [*firsts[1:], len(order)], strict=True):
        runs = last - first
        trailing = height * width - int(ends[last - 1])
        counts = np.empty(2 * runs + (trailing > 0), dtype=np.int64)  # zeros, ones, zeros, ...
        counts[0 : 2 * runs : 2] = gaps[first:last]
        counts[1 : 2 * runs : 2] = lengths[first:last]
        if trailing:
            counts[-1] = trailing
        uncompressed = {"counts": counts.tolist(), "size": [height, width]}
        rles[int(class_id)] = coco_mask.frPyObjects(uncompressed, height, width)
    return rles


def segments_from_label_map(
    label_map: np.ndarray,
    score_sums: Mapping[int, float] | np.ndarray,
    class_names: Mapping[int, str],
    margin_sums: Mapping[int, float] | np.ndarray | None = None,
    confidence_sums: Mapping[int, float] | np.ndarray | None = None,
) -> list[Segment]:
    """One Segment per class id present (0 = unlabeled is skipped), in id order. `score_sums`
    holds each class's summed SAN score over its pixels, `margin_sums` its summed top-two margin
    and `confidence_sums` its summed posterior (by id: a mapping, or an array indexed by id): a
    segment's raw score, margin and confidence are their means."""
    segments = []
    for class_id, rle in sorted(class_rles(label_map).items()):
        if class_id == 0:
            continue
        area = int(coco_mask.area(rle))
        x, y, w, h = (int(v) for v in coco_mask.toBbox(rle))
        segments.append(
            Segment(
                class_id=class_id,
                class_name=class_names[class_id],
                raw_score=float(score_sums[class_id] / area),
                margin=float(margin_sums[class_id] / area) if margin_sums is not None else None,
                confidence=float(confidence_sums[class_id] / area) if confidence_sums is not None else None,
                area=area,
                bbox=[x, y, w, h],
                rle_counts=rle["counts"].decode("ascii"),
                rle_size=[int(s) for s in rle["size"]],
            )
        )
    return segments


def score_sums(label_map: np.ndarray, scores: np.ndarray) -> dict[int, float]:
    """class id -> summed score over its pixels (for a map already held whole, as in tests)."""
    sums = np.bincount(label_map.ravel(), weights=scores.ravel().astype(np.float64))
    return {int(i): float(sums[i]) for i in np.flatnonzero(np.bincount(label_map.ravel()))}
