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
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from schemas.output import LabelRow, Provenance, frame_uri, label_row_schema

from ..images import describe_error
from ..labeling.encode import provenance_fields, row_fields
from ..labeling.progress import LabelingMetrics, peak_rss_mib
from ..results import video_result_file_name
from ..retries import PERMANENT, classify, is_transient
from .clips import ModelClip, prefetched, read_clips
from .decode import VideoError
from .inference import label_clip

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
DAMAGE_ERRORS = {"packet": "VideoDamage", "cut": "VideoCutOff", "empty": "VideoEmpty"}


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
    for damage in clip.clip.damage:
        if damage.kind != "packet" or not frames:
            rows.append(
                {
                    "image_uri": f"{video_uri}#clip={clip.index}",
                    "width": width if frames else None,
                    "height": height if frames else None,
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

    clips, first = None, None
    for attempt in range(1, sampling.io_attempts + 1):
        try:
            clips = open_clips()
            first = next(clips, None)
            break
        except Exception as e:
            if attempt < sampling.io_attempts and is_transient(e):
                delay = min(8.0, 0.5 * 2 ** (attempt - 1))
                log.info("opening %s failed (%s); try %d in %.1fs", video_uri, describe_error(e), attempt + 1, delay)
                time.sleep(delay)
                continue
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
        self,
        weights_ref: list,
        vocabulary_ref: list,
        class_names: dict[int, str],
        provenance: Provenance,
        run_id: str,
        use_gpu: bool,
        torch_threads: int,
        output: str,
        storage_options: dict[str, Any],
        sampling: VideoSampling,
        progress: Any = None,
        precision: str = "fp32",
        uncertainty_map: bool = False,
    ) -> None:
        import ray

        torch.set_num_threads(max(1, torch_threads))
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = ray.get(weights_ref[0]).build(self.device)
        self.vocabulary = ray.get(vocabulary_ref[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only shared memory; never written
            self.embeddings = torch.from_numpy(self.vocabulary.embeddings).to(self.device)
        self.class_ids = torch.from_numpy(self.vocabulary.class_ids.astype(np.int64)).to(self.device)
        self.class_names = class_names
        self.precision = precision
        self.uncertainty_map = uncertainty_map
        self.sampling = sampling
        self.storage_options = storage_options
        self.fs, self.root = fsspec.core.url_to_fs(output, **storage_options)
        self.progress = progress
        self.metrics = LabelingMetrics(provenance.model_id)
        self.schema = label_row_schema(provenance, run_id)
        self.shared = provenance_fields(provenance)

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
        path = f"{self.root.rstrip('/')}/{video_result_file_name(uuid.uuid4().hex)}"
        rows_written = 0
        failures: list[tuple[str, str | None]] = []
        with self.fs.open(path, "wb") as f, pq.ParquetWriter(f, self.schema) as writer:
            for rows in video_rows(video_uri, self.sampling, self._label, self.storage_options):
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
