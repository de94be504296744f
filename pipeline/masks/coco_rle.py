"""COCO's masks (pycocotools): an output row's segment RLE, and the segmentations of a COCO
document (polygons, RLE or compressed RLE), as bool masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask


def rle_to_mask(counts: str, size: Sequence[int]) -> np.ndarray:
    return coco_mask.decode({"counts": counts.encode("ascii"), "size": list(size)}).astype(bool)


def compressed_counts(counts: str) -> np.ndarray:
    """The run lengths a compressed COCO RLE string holds (pycocotools' `rleFrString`, checked):
    each count in 5-bit groups, least significant first, a 6th bit saying another group follows,
    as characters from '0'; the last group's top bit is its sign; from the third count on, each is
    stored as its difference from the count two before. ValueError for what is not such a string."""
    chars = np.frombuffer(counts.encode("ascii", errors="replace"), dtype=np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        return chars
    if chars.min() < 0 or chars.max() > 63 or chars[-1] & 0x20:
        raise ValueError("compressed RLE counts with a character out of range, or cut short")
    ends = np.flatnonzero((chars & 0x20) == 0)
    starts = np.concatenate(([0], ends[:-1] + 1))
    digit = np.arange(chars.size) - np.repeat(starts, ends - starts + 1)  # each group's place in its count
    if digit.max() > 11:
        raise ValueError("compressed RLE counts with a count over 60 bits")
    values = np.add.reduceat((chars & 0x1F) << (5 * digit), starts)
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (digit[ends][negative] + 1))
    values[1::2] = np.cumsum(values[1::2])  # differences from two counts before, from the third on
    values[2::2] = np.cumsum(values[2::2])
    if (values < 0).any():
        raise ValueError("compressed RLE counts with a negative run")
    return values


def coco_mask_of(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or compressed RLE) as a bool mask of `height` x `width`.
    ValueError for anything else: pycocotools trusts its input (a polygon a billion pixels long is
    rasterised edge by edge, RLE counts past the image are written past its buffer), so the
    segmentation is checked against the image first."""
    if isinstance(segmentation, list):  # polygons
        polygons = [np.asarray(p, dtype=np.float64) for p in segmentation if isinstance(p, list) and len(p) >= 6]
        for polygon in polygons:
            if polygon.ndim != 1 or polygon.size % 2 or polygon.size > 2 * height * width:
                raise ValueError(f"a polygon of {polygon.size} coordinates")
            xs, ys = polygon[0::2], polygon[1::2]
            if not (np.isfinite(polygon).all() and (np.abs(xs - width / 2) <= 1.5 * width).all()
                    and (np.abs(ys - height / 2) <= 1.5 * height).all()):  # fmt: skip
                raise ValueError(f"a polygon with points far outside the {width}x{height} image")
        rles = coco_mask.frPyObjects([p.tolist() for p in polygons], height, width)
        rle = coco_mask.merge(rles) if rles else None
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if list(segmentation.get("size") or []) != [height, width]:
            raise ValueError(f"an RLE of size {segmentation.get('size')} on a {width}x{height} image")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise ValueError(f"RLE counts that do not add up to the image's {height * width:,} pixels")
            rle = coco_mask.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str) and len(counts) <= 8 * (height * width + 1):
            if compressed_counts(counts).sum() != height * width:
                raise ValueError(f"compressed RLE counts that do not add up to the image's {height * width:,} pixels")
            rle = {"size": [height, width], "counts": counts.encode()}
        else:
            raise ValueError("compressed RLE counts that are not a string of at most one character a pixel")
    else:
        raise ValueError(f"a segmentation that is neither polygons nor RLE ({type(segmentation).__name__})")
    if rle is None:
        return np.zeros((height, width), dtype=bool)
    mask = coco_mask.decode(rle)
    if mask.shape[:2] != (height, width) or (mask.ndim == 3 and mask.shape[2] != 1):
        raise ValueError(f"an RLE that decodes to {mask.shape}, not {height}x{width}")
    return mask.reshape(height, width).astype(bool)
