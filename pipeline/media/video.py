"""Read a video as a stream of sampled RGB frames, grouped into clips, without holding it whole.

PyAV (FFmpeg) reads from any file object, so a video on object storage is read through fsspec in
ranged reads as the decoder asks for bytes. Frames come out one at a time; only the current clip
is held. A frame is kept by time (`fps`, from each frame's own timestamp, so variable-frame-rate
video is sampled evenly in time) or by count (`stride`). Frames are turned upright as the
container's display matrix says (phones record portrait video as rotated landscape).
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal

import fsspec
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi")


class VideoError(RuntimeError):
    """The file cannot be read as a video, or not from this point on."""


@dataclass
class VideoInfo:
    width: int  # coded size, before any rotation
    height: int
    average_fps: float | None
    duration_s: float | None  # what the container declares
    codec: str
    frames: int | None = None  # frames the container declares (None where it declares none)


@dataclass
class SampledFrame:
    index: int  # the frame's place in the source video, counting every decoded frame from 0
    timestamp_s: float  # presentation time
    rgb: np.ndarray  # [H, W, 3] uint8, upright


@dataclass
class Damage:
    """A place where the stream could not be decoded. `packet`: data in the middle could not be
    decoded, so the frames around it are not to be trusted; `cut`: the stream ends before its
    declared end (the frames before are whole); `empty`: no frame could be decoded at all;
    `oversize`: a frame larger than the pixel budget, left unconverted (a stream may change its
    frame size after its first frame, which is all a container's header declares)."""

    timestamp_s: float | None
    message: str
    kind: Literal["packet", "cut", "empty", "oversize"] = "packet"
    frame_index: int | None = None  # the frame it stands for, where it is one (`oversize`)


@dataclass
class Clip:
    """Consecutive sampled frames, the unit of clustering; `damage` names what broke inside it."""

    frames: list[SampledFrame]
    damage: list[Damage]


def is_video(uri: str) -> bool:
    return uri.lower().rsplit("?", 1)[0].endswith(VIDEO_EXTENSIONS)


def _upright(rgb: np.ndarray, rotation: float) -> np.ndarray:
    turns = round(rotation / 90) % 4  # np.rot90 turns counterclockwise, as the display matrix does
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


class VideoReader:
    """One open video. Use as a context manager; `frames()` streams the sampled frames."""

    def __init__(self, source: IO[bytes], name: str = "video") -> None:
        import av

        self.name = name
        if source.seek(0, 2) == 0:  # FFmpeg's own word for it is "Invalid argument"
            raise VideoError(f"{name}: an empty file (0 bytes), not a video")
        source.seek(0)
        try:
            self._container = av.open(source, mode="r", metadata_errors="ignore")
        except av.error.FFmpegError as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise VideoError(f"{name}: not a video FFmpeg can read ({reason})") from e
        if not self._container.streams.video:
            kinds = sorted({s.type for s in self._container.streams}) or ["none"]
            self._container.close()
            raise VideoError(f"{name}: no video stream (streams: {', '.join(kinds)})")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._container.close()

    def info(self) -> VideoInfo:
        stream = self._stream
        rate = stream.average_rate
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            duration = self._container.duration / 1_000_000
        width, height = stream.codec_context.width, stream.codec_context.height
        frames = int(stream.frames) if stream.frames else None
        return VideoInfo(width, height, float(rate) if rate else None, duration, stream.codec_context.name, frames)

    def frames(
        self,
        fps: float | None = None,
        stride: int | None = None,
        only: Container[int] | None = None,
        max_pixels: int | None = None,
    ) -> Iterator[SampledFrame | Damage]:
        """The sampled frames in presentation order: the first frame at or after each 1/fps tick
        (by the frames' own timestamps, so variable frame rates sample evenly in time), or every
        `stride`-th frame, or all; `only` keeps the frames of these indices alone (and converts
        no other frame to RGB). A packet that fails to decode, or a stream that ends well before
        the duration its container declares (a cut-off file, or damage the demuxer cannot read
        past), comes out as a Damage in its place; decoding goes on with the next packet. So does
        a sampled frame of more than `max_pixels` pixels, before it is converted to RGB. A frame
        that a demuxer drops without an error is not seen."""
        import av

        if fps is not None and fps <= 0:
            raise ValueError("fps must be positive")
        info = self.info()
        interval = 1 / info.average_fps if info.average_fps else None
        next_time, index, last_time = 0.0, -1, None
        for packet in self._container.demux(self._stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as e:
                at = float(packet.pts * packet.time_base) if packet.pts is not None and packet.time_base else last_time
                yield Damage(at, f"{self.name}: a packet at {_seconds(at)} could not be decoded ({e})")
                continue
            for frame in decoded:
                index += 1
                time = frame.time if frame.time is not None else (last_time or 0.0) + (interval or 0.0)
                last_time = time
                if (stride is not None and index % stride) or (only is not None and index not in only):
                    continue
                if fps is not None:
                    if time + 1e-9 < next_time:
                        continue
                    next_time = (math.floor(time * fps + 1e-9) + 1) / fps
                if max_pixels is not None and frame.width * frame.height > max_pixels:
                    yield Damage(
                        time,
                        f"{self.name}: frame {index} is {frame.width}x{frame.height} = "
                        f"{frame.width * frame.height:,} pixels, over the limit of {max_pixels:,} (--max-pixels)",
                        "oversize",
                        index,
                    )
                    continue
                yield SampledFrame(index, time, _upright(frame.to_ndarray(format="rgb24"), frame.rotation))
        if index < 0:
            yield Damage(None, f"{self.name}: no frame could be decoded", "empty")
        elif info.duration_s and interval and last_time is not None and last_time + 3 * interval < info.duration_s:
            yield Damage(
                last_time,
                f"{self.name}: the stream ends at {_seconds(last_time)} of the {_seconds(info.duration_s)} "
                "its container declares (a cut-off or damaged file)",
                "cut",
            )


def frames_at(
    uri: str, indices: Container[int], storage_options: Mapping[str, Any] | None = None
) -> Iterator[SampledFrame]:
    """The frames of these indices of the video at `uri` (any fsspec URI), decoded again, upright,
    in order; damaged ones are left out. The one way a labeled frame is read back (exports, the
    report, previews)."""
    with fsspec.open(uri, "rb", **(storage_options or {})) as source, VideoReader(source, uri) as reader:
        for item in reader.frames(only=indices):
            if isinstance(item, SampledFrame):
                yield item


def _seconds(value: float | None) -> str:
    return "an unknown time" if value is None else f"{value:.3f} s"


def clips(items: Iterator[SampledFrame | Damage], clip_length: int) -> Iterator[Clip]:
    """Consecutive groups of `clip_length` sampled frames (the last one shorter), each with the
    damage met while it was gathered. Damage after the last frame comes as a clip of no frames."""
    clip = Clip([], [])
    for item in items:
        if isinstance(item, Damage):
            clip.damage.append(item)
            continue
        clip.frames.append(item)
        if len(clip.frames) == clip_length:
            yield clip
            clip = Clip([], [])
    if clip.frames or clip.damage:
        yield clip
