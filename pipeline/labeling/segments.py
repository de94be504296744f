"""Pure functions from a label map to the segments an output row stores (COCO RLE), and back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as coco_mask

from schemas.output import Segment


def segments_from_label_map(label_map: np.ndarray, scores: np.ndarray, class_names: dict[int, str]) -> list[Segment]:
    """One Segment per class id present (0 = unlabeled is skipped), in id order."""
    segments = []
    ids, counts = np.unique(label_map, return_counts=True)
    for class_id, area in zip(ids.tolist(), counts.tolist(), strict=True):
        if class_id == 0:
            continue
        mask = label_map == class_id
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, w, h = (int(v) for v in coco_mask.toBbox(rle))
        segments.append(
            Segment(
                class_id=class_id,
                class_name=class_names[class_id],
                score=float(scores[mask].mean()),
                area=int(area),
                bbox=[x, y, w, h],
                rle_counts=rle["counts"].decode("ascii"),
                rle_size=[int(s) for s in rle["size"]],
            )
        )
    return segments


def rle_to_mask(counts: str, size: Sequence[int]) -> np.ndarray:
    return coco_mask.decode({"counts": counts.encode("ascii"), "size": list(size)}).astype(bool)
