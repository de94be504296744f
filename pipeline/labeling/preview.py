"""The first few labeled inputs of a run as overlay previews under the labels folder's `_previews/`."""

from __future__ import annotations

import logging

import fsspec

from schemas.jobs import LabelJobConfig
from schemas.taxonomy import Taxonomy

from ..masks.label_maps import decode_label_map
from ..media.images import decode_rgb
from ..store import LabelStore
from .overlays import PREVIEW_FRAMES, render_overlay, render_video_preview

log = logging.getLogger(__name__)


def write_previews(
    store: LabelStore, config: LabelJobConfig, taxonomy: Taxonomy, files: list[str], banner: str | None = None
) -> list[str]:
    """Overlay previews under the labels folder's _previews/ for the first `config.preview`
    labeled inputs of `files`: a PNG per image, an animated WebP of its first labeled frames per
    video; each with `banner` across its top if given (smoke-test previews must not pass for real
    labels). This run's previews replace the last run's, none left over."""
    store.clear_previews()
    written: list[str] = []
    columns = ["image_uri", "video_uri", "frame_index", "label_map_png", "error"]
    for path in files:
        table = store.read_file(path, columns)
        videos: dict[str, dict[int, bytes]] = {}
        for row in table.to_pylist():
            if row["error"] is not None:
                continue
            if row["video_uri"] is not None:
                frames = videos.setdefault(row["video_uri"], {})
                if len(frames) < PREVIEW_FRAMES:
                    frames[row["frame_index"]] = row["label_map_png"]
                continue
            if len(written) >= config.preview:
                return written
            with fsspec.open(row["image_uri"], "rb", **config.storage_options) as f:
                rgb = decode_rgb(f.read(), config.max_pixels, config.max_image_mib)
            overlay = render_overlay(rgb, decode_label_map(row["label_map_png"]), taxonomy, banner=banner)
            written.append(store.write_preview(len(written), row["image_uri"], "png", overlay))
        for video_uri, label_maps in videos.items():
            if len(written) >= config.preview:
                return written
            try:
                preview = render_video_preview(
                    video_uri, label_maps, taxonomy, config.video_fps, config.storage_options, banner
                )
            except Exception as e:  # a preview is a courtesy: the labels are written
                log.warning("no preview of %s: %s", video_uri, e)
                continue
            written.append(store.write_preview(len(written), video_uri, "webp", preview))
    return written
