"""A video on any fsspec URI as a stream of model-ready clips: the unit a labeling actor takes.

The file is opened through fsspec and read in ranged requests as the decoder asks for bytes, so
memory holds one clip of frames (plus fsspec's read-ahead block), never the video.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import numpy as np

from .images import resize_short_side
from .video import Clip, VideoError, VideoReader, clips

T = TypeVar("T")


@dataclass
class ModelClip:
    """One clip ready for `label_clip`: frames at the model's input size, and what to label them at."""

    index: int  # the clip's place in the video, from 0
    clip: Clip  # the decoded frames (full size, upright) and any damage met while reading them
    frames: list[np.ndarray]  # [h, w, 3] uint8, resized to the model's input size
    output_size: tuple[int, int]  # the video's own (H, W): label maps are made at this size
    frame_count: int | None = None  # frames in the whole video as its container declares them


def read_clips(
    uri: str,
    clip_length: int,
    fps: float | None = None,
    stride: int | None = None,
    short_side: int = 640,
    max_long_side: int = 2560,
    storage_options: Mapping[str, Any] | None = None,
    max_pixels: int | None = None,
) -> Iterator[ModelClip]:
    """The video's sampled frames in clips of `clip_length`, each frame resized for the model.
    Raises VideoError if the file cannot be read as a video at all, or if its header declares
    frames of more than `max_pixels` pixels; damage met later (a frame over `max_pixels` among
    them) rides on the clip it falls in (a clip of no frames for damage after the last one)."""
    with fsspec.open(uri, "rb", **(storage_options or {})) as source, VideoReader(source, uri) as reader:
        info = reader.info()
        if max_pixels is not None and info.width * info.height > max_pixels:
            raise VideoError(
                f"{uri}: frames of {info.width}x{info.height} = {info.width * info.height:,} pixels, over the "
                f"limit of {max_pixels:,} (--max-pixels)"
            )
        sampled = reader.frames(fps=fps, stride=stride, max_pixels=max_pixels)  # every frame held to the budget
        for index, clip in enumerate(clips(sampled, clip_length)):
            size = clip.frames[0].rgb.shape[:2] if clip.frames else (0, 0)
            frames = [resize_short_side(f.rgb, short_side, max_long_side) for f in clip.frames]
            yield ModelClip(index, clip, frames, (int(size[0]), int(size[1])), info.frames)


_DONE = object()


def prefetched(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """`items`, produced in a background thread up to `depth` ahead of the consumer (decoding the
    next clip while the model labels this one). An exception in the producer is raised here, in
    its place in the stream; a consumer that stops early stops the producer at its next item."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as e:  # handed to the consumer, raised where the item would have been
            put((_DONE, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator: let it close its file now, in this thread
                close()

    thread = threading.Thread(target=produce, name="video-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
