"""COCO JSON from a labeling output: categories from the taxonomy, RLE segmentations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.taxonomy import Taxonomy

from ..masks.coco_rle import rle_to_mask
from ..masks.polygons import mask_polygons
from .names import frame_name, relative_file_names, video_names


def to_coco(
    rows: Iterable[dict],
    taxonomy: Taxonomy,
    image_root: str | None = None,
    polygons: bool = False,
    tolerance: float = 1.0,
) -> dict[str, Any]:
    """COCO-style JSON: categories from the taxonomy, one image per labeled row (its `file_name`
    relative to `image_root`, recorded in `info`), one annotation (compressed RLE) per segment.
    Error rows are left out.

    A video frame's image also carries `video_id`, `frame_id` (its index in the video) and
    `timestamp_s`, and its `file_name` is `VIDEO/origin/FRAME.jpg` as `san export --format vspw`
    writes the frames; `videos` lists each video (`id`, `name`, `file_name` relative to
    `image_root`, `width`, `height`, `length` as its container declares it), as YouTube-VIS does.

    With `polygons`, each segment is its outlines (`polygons.mask_polygons`, simplified within
    `tolerance` pixels, iscrowd 0), except a segment with a hole, which a COCO polygon cannot
    hold: it stays RLE with iscrowd 1, as COCO marks masks. `info.rle_fallbacks` counts those."""

    categories = [{"id": c.id, "name": c.name, "supercategory": taxonomy.name} for c in taxonomy.classes]
    images, annotations = [], []
    videos: dict[str, dict[str, Any]] = {}
    fallbacks = 0
    for row in rows:
        if row["error"] is not None:
            continue
        image_id = len(images) + 1
        image = {"id": image_id, "file_name": row["image_uri"], "width": row["width"], "height": row["height"]}
        if row.get("video_uri") is not None:
            video = videos.setdefault(
                row["video_uri"],
                {"id": len(videos) + 1, "file_name": row["video_uri"], "width": row["width"],
                 "height": row["height"], "length": row.get("frame_count")},
            )  # fmt: skip
            image.update(video_id=video["id"], frame_id=row["frame_index"], timestamp_s=row.get("timestamp_s"))
        images.append(image)
        for segment in row["segments"]:
            segmentation: Any = {"size": segment["rle_size"], "counts": segment["rle_counts"]}
            crowd = 0
            if polygons:
                traced = mask_polygons(rle_to_mask(segment["rle_counts"], segment["rle_size"]), tolerance)
                if traced.has_holes or not traced.polygons:
                    crowd, fallbacks = 1, fallbacks + 1
                else:
                    segmentation = traced.polygons
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": segment["class_id"],
                    "segmentation": segmentation,
                    "area": segment["area"],
                    "bbox": segment["bbox"],
                    "iscrowd": crowd,
                    # COCO's `score`, as detectors write it: a probability, the segment's mean posterior
                    "score": segment.get("confidence"),
                    **({"margin": segment["margin"]} if segment.get("margin") is not None else {}),
                }
            )
    stills = [image for image in images if "video_id" not in image]
    files = [image["file_name"] for image in stills] + list(videos)
    relative, root = relative_file_names(files, image_root)
    for image, name in zip(stills, relative[: len(stills)], strict=True):
        image["file_name"] = name
    names = video_names(list(videos))
    by_id = {}
    for (uri, video), name in zip(videos.items(), relative[len(stills) :], strict=True):
        video.update(name=names[uri], file_name=name)
        by_id[video["id"]] = video
    for image in images:
        if "video_id" in image:
            image["file_name"] = f"{by_id[image['video_id']]['name']}/origin/{frame_name(image['frame_id'])}.jpg"
    coco = {
        "info": {"description": f"SAN labels for taxonomy {taxonomy.name} v{taxonomy.version}", "image_root": root},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    if polygons:
        coco["info"]["rle_fallbacks"] = fallbacks
    if videos:
        coco["videos"] = list(videos.values())
        coco["info"]["frames"] = "video frames' file_name: VIDEO/origin/FRAME.jpg, as `san export --format vspw` writes"
    return coco
