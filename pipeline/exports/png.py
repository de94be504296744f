"""A plain folder of label PNGs and a class table: what any tool or script can read.

    OUTPUT/PATH.png       an image's label map (PATH: the image's path under the images' common
                          folder or `--image-root`, without its extension)
    OUTPUT/VIDEO/FRAME.png  a video frame's (VIDEO as PATH, FRAME its index in 8 digits)
    OUTPUT/classes.csv    id,name,r,g,b: the taxonomy, 0 = unlabeled

Maps hold taxonomy ids: 8-bit palette PNGs coloured as the taxonomy colours them, or 16-bit
greyscale where an id exceeds 255. Error rows are left out.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from typing import Any

import fsspec

from schemas.taxonomy import Taxonomy

from ..masks.label_maps import decode_label_map
from ..store import LabelStore
from .names import common_folder, frame_name
from .vspw import mask_png

_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]")


def safe_relative(uri: str, root: str) -> str:
    """`uri` under `root`, without extension, as a relative path that stays inside any folder:
    no empty, `.` or `..` parts, no characters beyond letters, digits, `._ -`."""
    if not uri.startswith(root):
        raise ValueError(f"{uri} is not under --image-root {root}")
    parts = [_UNSAFE.sub("_", p) for p in uri[len(root) :].rsplit(".", 1)[0].split("/")]
    return "/".join(p if p.strip(".") else "_" for p in parts if p) or "_"


def export_png(
    labels: str,
    taxonomy: Taxonomy,
    output: str,
    image_root: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Write the label maps of the labeling output `labels` under `output`; returns counts."""
    options = dict(storage_options or {})
    store = LabelStore(labels, options)
    files = store.files()
    sources: list[str] = []
    for path in files:  # first the sources, whose common folder names the files
        table = store.read_file(path, ["image_uri", "video_uri"])
        for image, video in zip(table["image_uri"].to_pylist(), table["video_uri"].to_pylist(), strict=True):
            sources.append(video or image)
    root = common_folder(sorted(set(sources))) if image_root is None else image_root.rstrip("/") + "/"
    fs, out = fsspec.core.url_to_fs(output, **options)
    out = out.rstrip("/")
    palette = {c.id: c.rgb() for c in taxonomy.classes}
    counts = {"images": 0, "frames": 0}
    for path in files:
        table = store.read_file(path, ["image_uri", "video_uri", "frame_index", "label_map_png", "error"])
        for row in table.to_pylist():
            if row["error"] is not None or row["label_map_png"] is None:
                continue
            if row["video_uri"] is not None:
                name = f"{safe_relative(row['video_uri'], root)}/{frame_name(row['frame_index'])}"
                counts["frames"] += 1
            else:
                name = safe_relative(row["image_uri"], root)
                counts["images"] += 1
            target = f"{out}/{name}.png"
            fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            fs.pipe(target, mask_png(decode_label_map(row["label_map_png"]), palette))
    table_text = io.StringIO()
    writer = csv.writer(table_text)
    writer.writerow(["id", "name", "r", "g", "b"])
    writer.writerow([0, "unlabeled", 0, 0, 0])
    for c in taxonomy.classes:
        writer.writerow([c.id, c.name, *c.rgb()])
    fs.makedirs(out, exist_ok=True)
    fs.pipe(f"{out}/classes.csv", table_text.getvalue().encode())
    return counts
