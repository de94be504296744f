"""A video on any fsspec URI as a stream of model-ready clips: the unit a labeling actor takes.

The file is opened through fsspec and read in ranged requests as the decoder asks for bytes, so
memory holds one clip of frames (plus fsspec's read-ahead block), never the video.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from ..images import resize_short_side
from .decode import Clip, VideoReader, clips


@dataclass
class ModelClip:
    """One clip ready for `label_clip`: frames at the model's input size, and what to label them at."""

    index: int  # the clip's place in the video, from 0
    clip: Clip  # the decoded frames (full size, upright) and any damage met while reading them
    frames: list[np.ndarray]  # [h, w, 3] uint8, resized to the model's input size
    output_size: tuple[int, int]  # the video's own (H, W): label maps are made at this size


def read_clips(
    uri: str,
    clip_length: int,
    fps: float | None = None,
    stride: int | None = None,
    short_side: int = 640,
    max_long_side: int = 2560,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[ModelClip]:
    """The video's sampled frames in clips of `clip_length`, each frame resized for the model.
    Raises VideoError if the file cannot be read as a video at all; damage met later rides on
    the clip it falls in (a clip of no frames for damage after the last one)."""
    with fsspec.open(uri, "rb", **(storage_options or {})) as source, VideoReader(source, uri) as reader:
        for index, clip in enumerate(clips(reader.frames(fps=fps, stride=stride), clip_length)):
            size = clip.frames[0].rgb.shape[:2] if clip.frames else (0, 0)
            frames = [resize_short_side(f.rgb, short_side, max_long_side) for f in clip.frames]
            yield ModelClip(index, clip, frames, (int(size[0]), int(size[1])))
