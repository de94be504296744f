"""The job path without Ray: uint8 images in, label maps (PNG), segments and confidence out.

`label_images` is what every labeling actor calls per batch, and what the benchmarks time. The
label map is assembled tile by tile from the model's `predict_label_tiles`, mapped to taxonomy ids
on the way, with each class's score and top-two margin summed per tile: nothing of the output's
size is held but the uint16 map itself (2 bytes per pixel, and 1 more for an uncertainty map)
beside the tiles' fixed working set.

Confidence, from the same tiles: a pixel's margin is its top-two score difference relative to
its top score ((s1 - s2) / s1: 0 is a tie, 1 no rival). A segment's `margin` is its pixels' mean;
a row's `mean_score` and `mean_margin` are its pixels' means, and `uncertain_fraction` the share
of its pixels whose margin is under `UNCERTAIN_MARGIN`. The review order, least confident first,
is `uncertain_fraction` descending, then `mean_margin` ascending.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from san_core.postprocess import LabelTile
from schemas.output import UNCERTAIN_MARGIN, Segment

from ..label_maps import encode_label_png
from .segments import segments_from_label_map


@dataclass
class LabeledImage:
    label_map_png: bytes  # 16-bit PNG of taxonomy ids at the requested output size
    segments: list[Segment]
    mean_score: float  # the winning class's mean score over the pixels
    mean_margin: float  # the mean relative top-two margin
    uncertain_fraction: float  # the share of pixels whose margin is under UNCERTAIN_MARGIN
    uncertainty_png: bytes | None = None  # 8-bit PNG of the margin (255 = no rival), if asked for


@dataclass
class CollectedMap:
    """A label map put together on the host, and the sums its confidence is made of."""

    label_map: np.ndarray  # [H, W] uint16 taxonomy ids
    score_sums: dict[int, float]  # taxonomy id -> its pixels' summed score
    margin_sums: dict[int, float]  # taxonomy id -> its pixels' summed margin
    uncertain_pixels: int
    margin_map: np.ndarray | None  # [H, W] uint8, round(255 * margin), if asked for

    def labeled_image(self, class_names: Mapping[int, str]) -> LabeledImage:
        """What an output row stores: the PNG, the segments and the confidence."""
        pixels = max(1, self.label_map.size)
        uncertainty = None
        if self.margin_map is not None:
            buffer = io.BytesIO()
            Image.fromarray(self.margin_map, mode="L").save(buffer, format="PNG")
            uncertainty = buffer.getvalue()
        return LabeledImage(
            label_map_png=encode_label_png(self.label_map),
            segments=segments_from_label_map(self.label_map, self.score_sums, class_names, self.margin_sums),
            mean_score=sum(self.score_sums.values()) / pixels,
            mean_margin=sum(self.margin_sums.values()) / pixels,
            uncertain_fraction=self.uncertain_pixels / pixels,
            uncertainty_png=uncertainty,
        )


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
    uncertainty_map: bool = False,
) -> list[LabeledImage]:
    """Label uint8 RGB images [H, W, 3] (already at the model's input size) in one model call.

    embeddings: [C, D] vocabulary embeddings; class_ids: [C] the taxonomy id of each row (0 for
    distractor prompts, which then count as unlabeled). Label maps are at `output_sizes`;
    precision is fp32, bf16 (autocast) or auto, as for `SAN.predict`. `host_threads` encode the
    PNGs and segments while the device works on the next image; `uncertainty_map` adds each
    image's margin map.
    """
    device = embeddings.device
    # uint8 to the device (a quarter of float32's bytes); the model normalises into its own batch
    tensors = [torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1) for image in images]
    per_image = model.predict_label_tiles(
        tensors, embeddings, list(output_sizes), background=background, precision=precision
    )
    with ThreadPoolExecutor(max_workers=max(1, host_threads)) as host:
        encoded = [
            host.submit(collect_label_map(tiles, size, class_ids, uncertainty_map).labeled_image, class_names)
            for tiles, size in zip(per_image, output_sizes, strict=True)
        ]
        return [future.result() for future in encoded]


def collect_label_map(
    tiles: Iterable[LabelTile], size: tuple[int, int], class_ids: torch.Tensor, uncertainty_map: bool = False
) -> CollectedMap:
    """A label map of taxonomy ids put together on the host from a model's label tiles (class
    indices), with each id's summed score and margin, and the margin map if asked for."""
    height, width = size
    label_map = np.empty((height, width), dtype=np.uint16)
    margin_map = np.empty((height, width), dtype=np.uint8) if uncertainty_map else None
    bins = int(class_ids.max()) + 1
    sums = torch.zeros(bins, dtype=torch.float64, device=class_ids.device)
    margins = torch.zeros(bins, dtype=torch.float64, device=class_ids.device)
    uncertain = torch.zeros((), dtype=torch.int64, device=class_ids.device)
    for tile in tiles:
        ids = class_ids[tile.labels].flatten()
        runner_up = tile.runner_up if tile.runner_up is not None else torch.zeros_like(tile.scores)
        margin = ((tile.scores - runner_up) / tile.scores.clamp_min(1e-12)).clamp_(0, 1).flatten()
        sums += torch.bincount(ids, weights=tile.scores.flatten().double(), minlength=bins)
        margins += torch.bincount(ids, weights=margin.double(), minlength=bins)
        uncertain += (margin < UNCERTAIN_MARGIN).sum()
        rows, cols = tile.labels.shape
        where = (slice(tile.top, tile.top + rows), slice(tile.left, tile.left + cols))
        label_map[where] = ids.view(rows, cols).to(torch.int32).cpu().numpy()
        if margin_map is not None:
            margin_map[where] = (margin * 255).round_().to(torch.uint8).view(rows, cols).cpu().numpy()
    return CollectedMap(
        label_map,
        dict(enumerate(sums.cpu().tolist())),
        dict(enumerate(margins.cpu().tolist())),
        int(uncertain),
        margin_map,
    )


def assemble_label_map(
    tiles: Iterable[LabelTile],
    size: tuple[int, int],
    class_ids: torch.Tensor,
    class_names: Mapping[int, str],
    uncertainty_map: bool = False,
) -> LabeledImage:
    """`collect_label_map`, then what a row stores of it, in this thread."""
    return collect_label_map(tiles, size, class_ids, uncertainty_map).labeled_image(class_names)
