"""Video labels in the layout of VSPW, the video semantic segmentation benchmark:

    OUTPUT/VIDEO/origin/FRAME.jpg     the sampled frame, decoded again from the video
    OUTPUT/VIDEO/mask/FRAME.png       its label map: taxonomy ids, a palette PNG (8-bit) coloured as
                                      the taxonomy colours them, or 16-bit where an id exceeds 255
    OUTPUT/label_num_dic_final.json   class name -> id, as VSPW ships it
    OUTPUT/videos.txt                 one exported VIDEO per line

VIDEO is the video's path under the folder common to all exported videos, without its extension,
with `/` as `__` and any character outside [A-Za-z0-9._-] as `_`; FRAME is the frame's index in
the video, 8 digits. Frames whose rows are errors are left out.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
import pyarrow.compute as pc
from PIL import Image

from schemas.taxonomy import Taxonomy

from ..masks.label_maps import decode_label_map, encode_label_png
from ..media.video import frames_at
from ..store import LabelStore
from .names import frame_name, video_names


def mask_png(label_map: np.ndarray, palette: Mapping[int, tuple[int, int, int]]) -> bytes:
    """A label map as VSPW stores masks: an 8-bit palette PNG (values are the ids; the palette
    colours them for people), or a 16-bit greyscale PNG where an id exceeds 255."""
    buffer = io.BytesIO()
    if int(label_map.max(initial=0)) > 255:
        return encode_label_png(label_map)
    image = Image.fromarray(label_map.astype(np.uint8), mode="L").convert("P")
    colours = np.zeros((256, 3), dtype=np.uint8)
    for class_id, rgb in palette.items():
        if class_id < 256:
            colours[class_id] = rgb
    image.putpalette(colours.ravel().tolist())
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def export_vspw(
    labels: str,
    taxonomy: Taxonomy,
    output: str,
    storage_options: Mapping[str, Any] | None = None,
    jpeg_quality: int = 95,
) -> dict[str, int]:
    """Write every labeled frame of the videos in the labeling output `labels` in the VSPW layout
    under `output`; returns counts of videos and frames written. A video's rows all live in one
    result file, so memory holds one file's label maps at a time."""
    options = dict(storage_options or {})
    store = LabelStore(labels, options)
    files = store.files()
    videos: set[str] = set()
    for path in files:  # first the names, which depend on every video's path
        column = store.read_file(path, ["video_uri"]).column("video_uri")
        videos.update(v for v in column.unique().to_pylist() if v is not None)
    names = video_names(sorted(videos))
    fs, root = fsspec.core.url_to_fs(output, **options)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    palette = {c.id: c.rgb() for c in taxonomy.classes}
    written = 0
    for path in files:
        table = store.read_file(path, ["video_uri", "frame_index", "label_map_png", "error"])
        label_maps: dict[str, dict[int, bytes]] = {}
        for row in table.filter(pc.and_(pc.is_valid(table["video_uri"]), pc.is_null(table["error"]))).to_pylist():
            if row["frame_index"] is not None:
                label_maps.setdefault(row["video_uri"], {})[row["frame_index"]] = row["label_map_png"]
        for video_uri, maps in label_maps.items():
            written += _write_video(video_uri, maps, f"{root}/{names[video_uri]}", fs, palette, options, jpeg_quality)
    classes = {c.name: c.id for c in taxonomy.classes}
    fs.pipe(f"{root}/label_num_dic_final.json", json.dumps(classes, indent=1).encode())
    fs.pipe(f"{root}/videos.txt", "".join(f"{names[u]}\n" for u in sorted(videos)).encode())
    return {"videos": len(videos), "frames": written}


def _write_video(
    video_uri: str,
    label_maps: Mapping[int, bytes],
    folder: str,
    fs: fsspec.AbstractFileSystem,
    palette: Mapping[int, tuple[int, int, int]],
    storage_options: Mapping[str, Any],
    jpeg_quality: int,
) -> int:
    """One video's labeled frames (decoded again) and masks; returns how many were written."""
    fs.makedirs(f"{folder}/origin", exist_ok=True)
    fs.makedirs(f"{folder}/mask", exist_ok=True)
    written = 0
    for item in frames_at(video_uri, label_maps, storage_options):
        label_map = decode_label_map(label_maps[item.index])
        if label_map.shape != item.rgb.shape[:2]:
            raise ValueError(
                f"{video_uri} frame {item.index}: a label map of {label_map.shape} for a frame of "
                f"{item.rgb.shape[:2]}: was the video replaced after it was labeled?"
            )
        jpeg = io.BytesIO()
        Image.fromarray(item.rgb).save(jpeg, format="JPEG", quality=jpeg_quality)
        fs.pipe(f"{folder}/origin/{frame_name(item.index)}.jpg", jpeg.getvalue())
        fs.pipe(f"{folder}/mask/{frame_name(item.index)}.png", mask_png(label_map, palette))
        written += 1
    return written
