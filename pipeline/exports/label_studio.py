"""Label Studio tasks with SAN's labels as pre-annotations (predictions), and the labeling config
of a project that shows them.

Each labeled image becomes a task whose `data.image` is a URL Label Studio opens: an object-store
URI as it is (Label Studio signs `s3://`, `gs://` and `azure-blob://` URLs of a bucket connected
as cloud storage), a local file as `/data/local-files/?d=PATH` relative to `--image-root` (Label
Studio's local file serving, LOCAL_FILES_DOCUMENT_ROOT). Each segment becomes one result: a brush
mask in Label Studio's RLE, or with `polygons` one polygon per connected part, carrying the
segment's confidence (its mean posterior, 0 to 1). A polygon cannot hold a hole, so with
`polygons` a segment with one stays a brush mask (the config then has both tools, on the same
classes), never a filled outline that would paint over the classes inside it. The prediction's
score is the image's mean confidence (0 to 1), so that Label Studio's sort by prediction score
shows the least confident first.

Label Studio's brush RLE is `pipeline.masks.brush`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from schemas.taxonomy import Taxonomy

from ..masks.brush import brush_rle
from ..masks.coco_rle import rle_to_mask
from ..masks.polygons import mask_polygons

FROM_NAME, POLYGON_FROM_NAME, TO_NAME = "label", "polygon", "image"
_CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://", "http://", "https://")


def image_url(uri: str, image_root: str | None) -> str:
    """The URL Label Studio opens for an image (see the module's docstring)."""
    if uri.startswith(_CLOUD_SCHEMES):
        return uri
    path = uri.removeprefix("file://")
    if image_root is None:
        return path
    root = image_root.removeprefix("file://").rstrip("/") + "/"
    if not path.startswith(root):
        raise ValueError(f"{uri} is not under --image-root {image_root}")
    return "/data/local-files/?d=" + quote(posixpath.relpath(path, root.rstrip("/") or "/"))


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def labeling_config(taxonomy: Taxonomy, polygons: bool = False) -> str:
    """The XML labeling config of a project whose tasks these are (classes in the taxonomy's
    colours): the brush, and with `polygons` the polygon tool beside it."""
    labels = "\n".join(
        f"    <Label value={quoteattr(c.name)} background={quoteattr(_hex(c.rgb()))}/>" for c in taxonomy.classes
    )
    tools = [("PolygonLabels", POLYGON_FROM_NAME)] if polygons else []
    tools.append(("BrushLabels", FROM_NAME))
    controls = "".join(f'  <{tag} name="{name}" toName="{TO_NAME}">\n{labels}\n  </{tag}>\n' for tag, name in tools)
    return f'<View>\n  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n{controls}</View>\n'


def to_label_studio(
    rows: Iterable[dict[str, Any]],
    taxonomy: Taxonomy,
    image_root: str | None = None,
    polygons: bool = False,
    tolerance: float = 1.0,
    model_version: str = "san",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Tasks for Label Studio's JSON import, and counts (tasks, results, video frames left out,
    and with `polygons` the segments kept as brush masks for their holes)."""
    tasks: list[dict[str, Any]] = []
    counts = {"tasks": 0, "results": 0, "video_frames_skipped": 0, "brush_fallbacks": 0}
    for row in rows:
        if row["error"] is not None:
            continue
        if row.get("video_uri") is not None:  # Label Studio labels video frames in its own video editor
            counts["video_frames_skipped"] += 1
            continue
        width, height = row["width"], row["height"]
        results = []
        for segment in row["segments"]:
            mask = rle_to_mask(segment["rle_counts"], segment["rle_size"])
            common = {
                "to_name": TO_NAME,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "score": segment.get("confidence"),  # the segment's mean posterior, 0 to 1
            }
            traced = mask_polygons(mask, tolerance) if polygons else None
            if traced is not None and not traced.has_holes:
                for part, outline in enumerate(traced.polygons):
                    points = [
                        [100 * outline[i] / width, 100 * outline[i + 1] / height] for i in range(0, len(outline), 2)
                    ]
                    results.append(
                        {
                            "id": f"s{segment['class_id']}p{part}",
                            "from_name": POLYGON_FROM_NAME,
                            "type": "polygonlabels",
                            "value": {"points": points, "closed": True, "polygonlabels": [segment["class_name"]]},
                            **common,
                        }
                    )
            else:
                counts["brush_fallbacks"] += traced is not None  # asked for polygons: a hole kept it a mask
                results.append(
                    {
                        "id": f"s{segment['class_id']}",
                        "from_name": FROM_NAME,
                        "type": "brushlabels",
                        "value": {"format": "rle", "rle": brush_rle(mask), "brushlabels": [segment["class_name"]]},
                        **common,
                    }
                )
        # the image's mean confidence (the winning classes' posterior, 0 to 1): sorting tasks by
        # prediction score puts the least confident first, the order to review them in
        score = row.get("mean_confidence")
        tasks.append(
            {
                "data": {TO_NAME: image_url(row["image_uri"], image_root), "san_image_uri": row["image_uri"]},
                "predictions": [{"model_version": model_version, "score": score, "result": results}],
            }
        )
        counts["tasks"] += 1
        counts["results"] += len(results)
    return tasks, counts
