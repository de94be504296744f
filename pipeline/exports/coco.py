"""COCO JSON from a labeling output: categories from the taxonomy, RLE segmentations."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Any

from schemas.taxonomy import Taxonomy


def common_folder(uris: list[str]) -> str:
    """The deepest folder (or prefix) holding every URI, ending in '/'."""
    if not uris:
        return ""
    folders = [u.rsplit("/", 1)[0] + "/" if "/" in u else "" for u in uris]
    common = posixpath.commonprefix(folders)
    return common[: common.rfind("/") + 1]


def relative_file_names(uris: list[str], image_root: str | None) -> tuple[list[str], str]:
    """Each URI relative to `image_root` (default: their common folder), as annotation tools resolve
    `file_name` against the image folder they are given; and the root used."""
    root = common_folder(uris) if image_root is None else image_root.rstrip("/") + "/"
    outside = [u for u in uris if not u.startswith(root)]
    if outside:
        raise ValueError(f"{len(outside)} images are not under --image-root {root} (first: {outside[0]})")
    return [u[len(root) :] for u in uris], root


def to_coco(rows: Iterable[dict], taxonomy: Taxonomy, image_root: str | None = None) -> dict[str, Any]:
    """COCO-style JSON: categories from the taxonomy, one image per labeled row (its `file_name`
    relative to `image_root`, recorded in `info`), one annotation (compressed RLE) per segment.
    Error rows are left out."""
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
    names, root = relative_file_names([image["file_name"] for image in images], image_root)
    for image, name in zip(images, names, strict=True):
        image["file_name"] = name
    return {
        "info": {"description": f"SAN labels for taxonomy {taxonomy.name} v{taxonomy.version}", "image_root": root},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
