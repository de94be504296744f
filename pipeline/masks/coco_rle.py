"""COCO's masks (pycocotools): an output row's segment RLE, and the segmentations of a COCO
document (polygons, RLE or compressed RLE), as bool masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask


def rle_to_mask(counts: str, size: Sequence[int]) -> np.ndarray:
    return coco_mask.decode({"counts": counts.encode("ascii"), "size": list(size)}).astype(bool)


def coco_mask_of(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, RLE or compressed RLE) as a bool mask."""
    if isinstance(segmentation, list):  # polygons
        rles = coco_mask.frPyObjects([p for p in segmentation if len(p) >= 6], height, width)
        rle = coco_mask.merge(rles) if rles else None
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    if rle is None:
        return np.zeros((height, width), dtype=bool)
    return coco_mask.decode(rle).astype(bool)
