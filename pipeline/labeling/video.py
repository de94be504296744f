"""Videos in the labeling job: a Ray Data callable class that labels one video per call, clip by
clip, and writes every sampled frame's row to one Parquet file of the output.

One video is one result file, so a video is the unit of resume like an image is: its rows are all
there, or (a run killed mid-video: a local file without a footer, an S3 upload never completed)
none count and the next run labels it again. The file is written a clip at a time (one row group
per clip), so memory holds one clip, never the video. Decoding runs a clip ahead of the model.

What goes wrong becomes rows, and the job goes on: a file that is no video (or has no video
stream, or frames over --max-pixels) gets one error row; a clip with data that cannot be decoded
gets an error row per frame (the frames around damage are not to be trusted); a stream cut off
before its declared end keeps its labeled frames and adds one error row for the missing rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.output import LabelRow, frame_uri, label_row_schema

from ..media.clips import ModelClip, prefetched, read_clips
from ..media.images import describe_error
from ..media.video import VideoError
from ..retries import PERMANENT, classify, with_retries
from ..store import LabelStore
from .actors import ActorSpec
from .encode import provenance_fields, row_fields
from .progress import LabelingMetrics, peak_rss_mib
from .video_inference import label_clip

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a video are labeled, and how many share proposals."""

    clip_length: int
    fps: float | None  # by timestamp; exclusive with stride
    stride: int | None
    short_side: int
    max_long_side: int
    max_pixels: int
    io_attempts: int = 4


# How an error row names each kind of damage (the progress line and metrics count by this name).
DAMAGE_ERRORS = {"packet": "VideoDamage", "cut": "VideoCutOff", "empty": "VideoEmpty", "oversize": "FrameTooLarge"}


def _without_name(message: str, video_uri: str) -> str:
    """A decoder message without the video's name in front: the row already says which video."""
    return message.removeprefix(f"{video_uri}: ")


def clip_rows(
    clip: ModelClip,
    video_uri: str,
    label: Callable[[ModelClip], list[Any]],
) -> list[dict[str, Any]]:
    """The rows of one clip (without the fields every row shares): a labeled row per frame, an
    error row per frame where the clip holds undecodable data or labeling fails, and an error row
    for the missing rest where the stream is cut off after these frames."""
    frames = clip.clip.frames
    packet_damage = [_without_name(d.message, video_uri) for d in clip.clip.damage if d.kind == "packet"]
    rows: list[dict[str, Any]] = []
    height, width = clip.output_size

    def frame_row(i: int, **fields: Any) -> dict[str, Any]:
        frame = frames[i]
        return {
            "image_uri": frame_uri(video_uri, frame.index),
            "width": width,
            "height": height,
            "frame_index": frame.index,
            "timestamp_s": frame.timestamp_s,
            "clip_index": clip.index,
            "frame_count": clip.frame_count,
            "segments": [],
            "label_map_png": None,
            "error": None,
            "error_kind": None,
            **fields,
        }

    if frames and packet_damage:
        error = "VideoDamage: " + "; ".join(packet_damage)
        rows += [frame_row(i, error=error, error_kind=PERMANENT) for i in range(len(frames))]
    elif frames:
        try:
            labeled = label(clip)
            rows += [frame_row(i, **row_fields(r)) for i, r in enumerate(labeled)]
        except Exception as e:  # e.g. out of memory on a long clip of a huge video
            log.exception("labeling clip %d of %s failed", clip.index, video_uri)
            error = f"labeling failed: {describe_error(e)}"
            rows += [frame_row(i, error=error, error_kind=PERMANENT) for i in range(len(frames))]
    clip_errors = 0
    for damage in clip.clip.damage:
        if damage.kind != "packet" or not frames:
            if damage.frame_index is not None:  # a frame's own row
                uri = frame_uri(video_uri, damage.frame_index)
            else:  # of the clip: the first `#clip=N`, any other `#clip=N&error=K`, one row per URI
                uri = f"{video_uri}#clip={clip.index}" + (f"&error={clip_errors}" if clip_errors else "")
                clip_errors += 1
            rows.append(
                {
                    "image_uri": uri,
                    "width": width if frames else None,
                    "height": height if frames else None,
                    "frame_index": damage.frame_index,
                    "timestamp_s": damage.timestamp_s,
                    "clip_index": clip.index,
                    "frame_count": clip.frame_count,
                    "segments": [],
                    "label_map_png": None,
                    "error": f"{DAMAGE_ERRORS[damage.kind]}: {_without_name(damage.message, video_uri)}",
                    "error_kind": PERMANENT,
                }
            )
    return rows


def video_rows(
    video_uri: str,
    sampling: VideoSampling,
    label: Callable[[ModelClip], list[Any]],
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Every row of one video, a clip's worth at a time (see `clip_rows`). Opening the video is
    tried again through transient failures like reading an image; a failure to open becomes the
    video's one error row, and a failure later an error row for the rest of it."""

    def open_clips() -> Iterator[ModelClip]:
        return prefetched(
            read_clips(
                video_uri,
                sampling.clip_length,
                fps=sampling.fps,
                stride=sampling.stride,
                short_side=sampling.short_side,
                max_long_side=sampling.max_long_side,
                storage_options=storage_options,
                max_pixels=sampling.max_pixels,
            )
        )

    def open_first() -> tuple[Iterator[ModelClip], ModelClip | None]:
        clips = open_clips()
        return clips, next(clips, None)

    try:
        clips, first = with_retries(open_first, f"opening {video_uri}", sampling.io_attempts)
    except Exception as e:
        kind = PERMANENT if isinstance(e, VideoError) else classify(e)
        yield [_video_error_row(video_uri, f"cannot read video: {describe_error(e)}", kind)]
        return
    if first is None or clips is None:
        yield [_video_error_row(video_uri, "cannot read video: it holds no frames", PERMANENT)]
        return
    next_index = first.index
    try:
        clip: ModelClip | None = first
        while clip is not None:
            next_index = clip.index + 1
            yield clip_rows(clip, video_uri, label)
            clip = next(clips, None)
    except Exception as e:  # the store or the file failed mid-way: the labeled clips stand
        row = _video_error_row(video_uri, f"reading stopped: {describe_error(e)}", classify(e))
        row["image_uri"], row["clip_index"] = f"{video_uri}#clip={next_index}", next_index
        yield [row]


def _video_error_row(video_uri: str, error: str, kind: str) -> dict[str, Any]:
    return {
        "image_uri": video_uri,
        "width": None,
        "height": None,
        "segments": [],
        "label_map_png": None,
        "error": error,
        "error_kind": kind,
    }


class SanVideoLabeler:
    """Ray Data callable class: loads SAN once per actor; each call labels whole videos, each
    into its own result file, and returns one summary row per video."""

    def __init__(
        self, spec: ActorSpec, class_names: dict[int, str], run_id: str, store: LabelStore, sampling: VideoSampling
    ) -> None:
        loaded = spec.load()
        self.device, self.model, self.vocabulary = loaded.device, loaded.model, loaded.vocabulary
        self.embeddings, self.class_ids = loaded.embeddings, loaded.class_ids
        self.class_names = class_names
        self.precision = spec.precision
        self.uncertainty_map = spec.uncertainty_map
        self.sampling = sampling
        self.store = store
        self.progress = spec.progress
        self.metrics = LabelingMetrics(spec.provenance.model_id)
        self.schema = label_row_schema(spec.provenance, run_id)
        self.shared = provenance_fields(spec.provenance)

    def _label(self, clip: ModelClip) -> list[Any]:
        return label_clip(
            self.model,
            clip.frames,
            clip.output_size,
            self.embeddings,
            self.class_ids,
            self.class_names,
            self.vocabulary.background,
            self.precision,
            self.uncertainty_map,
        )

    def label_video(self, video_uri: str) -> dict[str, Any]:
        """Label one video into a new result file; returns what it wrote."""
        started = time.perf_counter()
        rows_written = 0
        failures: list[tuple[str, str | None]] = []
        with self.store.video_writer(self.schema) as (path, writer):
            for rows in video_rows(video_uri, self.sampling, self._label, self.store.storage_options):
                complete = [LabelRow(**row, video_uri=video_uri, **self.shared).model_dump() for row in rows]
                failures += [(r["error"], r["error_kind"]) for r in complete if r["error"] is not None]
                rows_written += len(complete)
                writer.write_table(pa.Table.from_pylist(complete, schema=self.schema))
        self.metrics.record(time.perf_counter() - started, rows_written - len(failures), failures)
        if self.progress is not None:  # one input done, with each of its distinct errors once
            self.progress.add.remote(1, sorted({e for e, _ in failures}), peak_rss_mib())
        return {"video_uri": video_uri, "result_file": path, "rows": rows_written, "failed": len(failures)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [self.label_video(str(uri)) for uri in batch["video_uri"]]
        return {key: np.array([d[key] for d in done], dtype=object) for key in done[0]} if done else {}
