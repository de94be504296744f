"""COCO JSON from a labeling output: categories from the taxonomy, RLE segmentations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.taxonomy import Taxonomy


def to_coco(rows: Iterable[dict], taxonomy: Taxonomy) -> dict[str, Any]:
    """COCO-style JSON: categories from the taxonomy, one image per labeled row, one annotation
    (compressed RLE) per segment. Error rows are left out."""
    categories = [{"id": c.id, "name": c.name, "supercategory": taxonomy.name} for c in taxonomy.classes]
    images, annotations = [], []
    for row in rows:
        if row["error"] is not None:
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": row["image_uri"], "width": row["width"], "height": row["height"]})
        for segment in row["segments"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": segment["class_id"],
                    "segmentation": {"size": segment["rle_size"], "counts": segment["rle_counts"]},
                    "area": segment["area"],
                    "bbox": segment["bbox"],
                    "iscrowd": 0,
                    "score": segment["score"],
                }
            )
    return {
        "info": {"description": f"SAN labels for taxonomy {taxonomy.name} v{taxonomy.version}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
