"""Overlays for a person to look at: the image, translucent class colours, a legend (`render_overlay`);
a video's first labeled frames so tinted, as one animated WebP that browsers play
(`render_video_preview`)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from schemas.taxonomy import Taxonomy

from ..masks.label_maps import decode_label_map
from ..media.video import frames_at

BANNER_HEIGHT = 22


def render_overlay(
    rgb: np.ndarray, label_map: np.ndarray, taxonomy: Taxonomy, alpha: float = 0.5, banner: str | None = None
) -> bytes:
    """PNG bytes of `overlay_image`."""
    buffer = io.BytesIO()
    overlay_image(rgb, label_map, taxonomy, alpha, banner).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_image(
    rgb: np.ndarray, label_map: np.ndarray, taxonomy: Taxonomy, alpha: float = 0.5, banner: str | None = None
) -> Image.Image:
    """`rgb` [H, W, 3] with each labeled class tinted in its colour, plus a legend (classes by
    area) on a white strip at the right, and `banner` in white on red across the top."""
    palette = np.zeros((int(label_map.max(initial=0)) + 1, 3), dtype=np.float32)
    names = {}
    for cls in taxonomy.classes:
        if cls.id < len(palette):
            palette[cls.id] = cls.rgb()
            names[cls.id] = cls.name
    tinted = rgb.astype(np.float32)
    labeled = label_map > 0
    tinted[labeled] = (1 - alpha) * tinted[labeled] + alpha * palette[label_map[labeled]]
    image = Image.fromarray(tinted.clip(0, 255).astype(np.uint8))

    ids, counts = np.unique(label_map[labeled], return_counts=True)
    order = [int(i) for i in ids[np.argsort(-counts)]]
    font = ImageFont.load_default()
    row = 16
    legend_w = 200
    head = BANNER_HEIGHT if banner else 0  # the banner sits above the image, hiding nothing
    canvas = Image.new("RGB", (image.width + legend_w, head + max(image.height, row * (len(order) + 1))), "white")
    canvas.paste(image, (0, head))
    draw = ImageDraw.Draw(canvas)
    for k, class_id in enumerate(order):
        top = head + 4 + k * row
        colour = tuple(int(c) for c in palette[class_id])
        draw.rectangle([image.width + 6, top, image.width + 18, top + 12], fill=colour, outline="black")
        share = counts[list(ids).index(class_id)] / label_map.size
        draw.text((image.width + 24, top), f"{names.get(class_id, class_id)} {share:.0%}", fill="black", font=font)
    if banner:
        draw.rectangle([0, 0, canvas.width, BANNER_HEIGHT], fill=(200, 0, 0))
        draw.text((6, 5), banner, fill="white", font=font)
    return canvas


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
    for item in frames_at(video_uri, label_maps, storage_options):
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
