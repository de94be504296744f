"""Real videos for the tests, encoded with PyAV from scikit-image's photographs with camera
motion (a pan across the photo and a zoom into it)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

# container format -> (codec, pixel format)
FORMATS = {
    "mp4": ("mp4", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "mkv": ("matroska", "libx264", "yuv420p"),
    "avi": ("avi", "mjpeg", "yuvj420p"),
    "mov": ("mov", "mpeg4", "yuv420p"),
}


def camera_frames(photo: np.ndarray, count: int, size: tuple[int, int], motion: str = "pan") -> list[np.ndarray]:
    """`count` views of `photo` of `size` (height, width): panning right and down, or zooming in."""
    height, width = size
    frames = []
    for i in range(count):
        t = i / max(1, count - 1)
        if motion == "pan":
            top = int(t * (photo.shape[0] - height) * 0.5)
            left = int(t * (photo.shape[1] - width))
            view = photo[top : top + height, left : left + width]
        else:  # zoom: a shrinking window around the centre, resized to `size` by nearest neighbour
            scale = 1.0 - 0.5 * t
            h, w = int(photo.shape[0] * scale), int(photo.shape[1] * scale)
            top, left = (photo.shape[0] - h) // 2, (photo.shape[1] - w) // 2
            rows = top + (np.arange(height) * h // height)
            cols = left + (np.arange(width) * w // width)
            view = photo[rows][:, cols]
        frames.append(np.ascontiguousarray(view[..., :3]))
    return frames


def encode(
    frames: Sequence[np.ndarray],
    container: str = "mp4",
    fps: int = 10,
    rotation: int = 0,
    times: Sequence[float] | None = None,
) -> bytes:
    """Encode RGB frames; `rotation` sets the display matrix (degrees counterclockwise); `times`
    (seconds) give each frame its own timestamp, for a variable frame rate."""
    fmt, codec, pix_fmt = FORMATS[container]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if times is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if times is not None:
                frame.pts = round(times[i] * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def audio_only() -> bytes:
    """A file with one audio stream and no video (a podcast someone put in the bucket)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as output:
        stream = output.add_stream("pcm_s16le", rate=8000)
        stream.layout = "mono"
        samples = (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440) * 3000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()
