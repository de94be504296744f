"""A video's overlay preview for a person to look at: its first labeled frames, each tinted with
its label map and a legend, as one animated WebP (browsers and image viewers play it)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from schemas.taxonomy import Taxonomy

from ..label_maps import decode_label_map
from ..labeling.preview import overlay_image
from .decode import SampledFrame, VideoReader

PREVIEW_FRAMES = 24  # frames in one preview
PREVIEW_WIDTH = 480  # frames wider than this are shrunk for the preview


def render_video_preview(
    video_uri: str,
    label_maps: Mapping[int, bytes],
    taxonomy: Taxonomy,
    fps: float | None,
    storage_options: Mapping[str, Any] | None = None,
    banner: str | None = None,
    max_frames: int = PREVIEW_FRAMES,
) -> bytes:
    """Animated WebP bytes of the first `max_frames` frames with a label map (frame index -> PNG),
    decoded again, shown at `fps` (the sampling rate; 5 frames a second where it is unknown)."""
    overlays: list[Image.Image] = []
    with fsspec.open(video_uri, "rb", **(storage_options or {})) as source, VideoReader(source, video_uri) as reader:
        for item in reader.frames(only=label_maps):
            if not isinstance(item, SampledFrame) or item.index not in label_maps:
                continue
            rgb, label_map = item.rgb, decode_label_map(label_maps[item.index])
            if rgb.shape[1] > PREVIEW_WIDTH:  # the label map is at the frame's own size: shrink both alike
                size = (PREVIEW_WIDTH, max(1, round(rgb.shape[0] * PREVIEW_WIDTH / rgb.shape[1])))
                rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
                label_map = np.asarray(Image.fromarray(label_map).resize(size, Image.NEAREST))
            overlays.append(overlay_image(rgb, label_map, taxonomy, banner=banner))
            if len(overlays) == max_frames:
                break
    if not overlays:
        raise ValueError(f"{video_uri}: none of its labeled frames could be decoded again")
    width, height = max(o.width for o in overlays), max(o.height for o in overlays)
    frames = []
    for overlay in overlays:  # legends differ in length: one canvas size for the whole animation
        canvas = Image.new("RGB", (width, height), "white")
        canvas.paste(overlay, (0, 0))
        frames.append(canvas)
    buffer = io.BytesIO()
    interval_ms = round(1000 / fps) if fps else 200
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=interval_ms, loop=0)
    return buffer.getvalue()
