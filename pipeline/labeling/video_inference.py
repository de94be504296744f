"""The video path without Ray: one clip of uint8 frames in, a label map (PNG) and segments per
frame out, from the journal version's shared proposals (`SAN.predict_video_label_tiles`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .inference import LabeledImage, assemble_label_map


def label_clip(
    model: torch.nn.Module,
    frames: Sequence[np.ndarray],
    output_size: tuple[int, int],
    embeddings: torch.Tensor,
    class_ids: torch.Tensor,
    class_names: Mapping[int, str],
    background: bool = True,
    precision: str = "fp32",
    uncertainty_map: bool = False,
) -> list[LabeledImage]:
    """Label one clip: uint8 RGB frames [H, W, 3], all one size (the model's input size), in one
    model call with proposals shared across the frames. Label maps hold taxonomy ids at
    `output_size` (the video's own size), one per frame; precision as for `label_images`."""
    device = embeddings.device
    writable = [np.require(f, requirements=["C", "W"]) for f in frames]  # decoders may hand out read-only views
    tensors = [torch.from_numpy(f).to(device).permute(2, 0, 1) for f in writable]  # uint8: the model normalises
    _, per_frame = model.predict_video_label_tiles(
        tensors, embeddings, output_size, background=background, precision=precision
    )
    return [assemble_label_map(tiles, output_size, class_ids, class_names, uncertainty_map) for tiles in per_frame]
