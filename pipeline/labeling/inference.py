"""The job path without Ray: uint8 images in, label maps (PNG) and segments out.

`label_images` is what every labeling actor calls per batch, and what the benchmarks time. The
label map is assembled tile by tile from the model's `predict_label_tiles`, mapped to taxonomy ids
on the way, with each class's score summed per tile: nothing of the output's size is held but the
uint16 map itself (2 bytes per pixel) beside the tiles' fixed working set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from san_core.postprocess import LabelTile
from schemas.output import Segment

from ..label_maps import encode_label_png
from .segments import segments_from_label_map


@dataclass
class LabeledImage:
    label_map_png: bytes  # 16-bit PNG of taxonomy ids at the requested output size
    segments: list[Segment]


# Threads that encode PNGs and find segments while the device makes the next image's label map
# (Pillow releases the GIL while it compresses). On a GPU the host's share is most of the job
# path's time (benchmarks/job_path.py --breakdown), so an actor passes its whole CPU share.
HOST_THREADS = 2


def label_images(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    output_sizes: Sequence[tuple[int, int]],
    embeddings: torch.Tensor,
    class_ids: torch.Tensor,
    class_names: Mapping[int, str],
    background: bool = True,
    precision: str = "fp32",
    host_threads: int = HOST_THREADS,
) -> list[LabeledImage]:
    """Label uint8 RGB images [H, W, 3] (already at the model's input size) in one model call.

    embeddings: [C, D] vocabulary embeddings; class_ids: [C] the taxonomy id of each row (0 for
    distractor prompts, which then count as unlabeled). Label maps are at `output_sizes`;
    precision is fp32, bf16 (autocast) or auto, as for `SAN.predict`. `host_threads` encode the
    PNGs and segments while the device works on the next image.
    """
    device = embeddings.device
    tensors = [torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float() for image in images]
    per_image = model.predict_label_tiles(
        tensors, embeddings, list(output_sizes), background=background, precision=precision
    )
    with ThreadPoolExecutor(max_workers=max(1, host_threads)) as host:
        encoded = [
            host.submit(encode_label_map, *collect_label_map(tiles, size, class_ids), class_names)
            for tiles, size in zip(per_image, output_sizes, strict=True)
        ]
        return [future.result() for future in encoded]


def collect_label_map(
    tiles: Iterable[LabelTile], size: tuple[int, int], class_ids: torch.Tensor
) -> tuple[np.ndarray, dict[int, float]]:
    """A label map of taxonomy ids put together on the host from a model's label tiles (class
    indices), and each id's summed score (for its segment's mean score)."""
    height, width = size
    label_map = np.empty((height, width), dtype=np.uint16)
    sums = torch.zeros(int(class_ids.max()) + 1, dtype=torch.float64, device=class_ids.device)
    for tile in tiles:
        ids = class_ids[tile.labels]
        sums += torch.bincount(ids.flatten(), weights=tile.scores.flatten().double(), minlength=sums.numel())
        rows, cols = ids.shape
        label_map[tile.top : tile.top + rows, tile.left : tile.left + cols] = ids.cpu().numpy()
    return label_map, dict(enumerate(sums.cpu().tolist()))


def encode_label_map(
    label_map: np.ndarray, score_sums: Mapping[int, float], class_names: Mapping[int, str]
) -> LabeledImage:
    """What an output row stores of a label map: its PNG and its segments."""
    return LabeledImage(
        label_map_png=encode_label_png(label_map),
        segments=segments_from_label_map(label_map, score_sums, class_names),
    )


def assemble_label_map(
    tiles: Iterable[LabelTile], size: tuple[int, int], class_ids: torch.Tensor, class_names: Mapping[int, str]
) -> LabeledImage:
    """`collect_label_map` then `encode_label_map`, in this thread."""
    return encode_label_map(*collect_label_map(tiles, size, class_ids), class_names)
