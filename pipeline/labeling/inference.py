"""The job path without Ray, in its two halves: the device's (`label_maps`: uint8 images in,
label maps and confidence sums out as plain arrays) and the host's (`LabelMapArrays.labeled_image`:
the label-map PNG, the segments and the confidence an output row stores).

A labeling actor runs the first half only and hands its arrays to CPU tasks that run the second
(`pipeline.labeling.encode`), so that a GPU's actor spends its time on the device. `label_images`
runs both in one process: what the benchmarks time and the video path's frames share.

The label map is assembled tile by tile from the model's `predict_label_tiles` on the model's
device, mapped to taxonomy ids on the way, with each class's score and top-two margin summed per
tile: nothing of the output's size is held but the map itself (2 bytes per pixel, and 1 more for
an uncertainty map) beside the tiles' fixed working set. On a GPU the finished maps come back to
the host in one batch of asynchronous copies, with no wait between images.

Confidence, from the same tiles: a pixel's confidence is its winning class's posterior, the
class's score normalised over the vocabulary (s1 / the sum of every class's score: the scores of
all classes at a pixel sum to 1), and its margin the top-two score difference relative to its top
score ((s1 - s2) / s1: 0 is a tie, 1 no rival). A segment's `confidence` and `margin` are its
pixels' means; a row's `mean_confidence` and `mean_margin` likewise over the image, and
`uncertain_fraction` the share of its pixels whose margin is under `UNCERTAIN_MARGIN`. SAN's own
score (a sum over the mask proposals, not bounded by 1) is kept as `raw_score`. The review order,
least confident first, is `uncertain_fraction` descending, then `mean_margin` ascending.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from san_core.postprocess import LabelBatch, LabelTile
from schemas.output import UNCERTAIN_MARGIN, Segment

from ..masks.label_maps import encode_label_png, encode_png
from .segments import segments_from_label_map


@dataclass
class LabeledImage:
    label_map_png: bytes  # 16-bit PNG of taxonomy ids at the requested output size
    segments: list[Segment]
    mean_confidence: float  # the winning class's mean posterior over the pixels (0 to 1)
    mean_margin: float  # the mean relative top-two margin
    mean_raw_score: float  # the winning class's mean SAN score over the pixels
    uncertain_fraction: float  # the share of pixels whose margin is under UNCERTAIN_MARGIN
    uncertainty_png: bytes | None = None  # 8-bit PNG of the margin (255 = no rival), if asked for


@dataclass
class LabelMapArrays:
    """What the device makes of one image: its label map and the sums its confidence is made of,
    as host arrays, nothing encoded yet."""

    label_map: np.ndarray  # [H, W] uint16 taxonomy ids
    score_sums: np.ndarray  # [max id + 1] float64: each id's pixels' summed SAN score
    margin_sums: np.ndarray  # [max id + 1] float64: each id's pixels' summed margin
    uncertain_pixels: int
    margin_map: np.ndarray | None  # [H, W] uint8, round(255 * margin), if asked for
    confidence_sums: np.ndarray  # [max id + 1] float64: each id's pixels' summed posterior

    def labeled_image(self, class_names: Mapping[int, str]) -> LabeledImage:
        """What an output row stores: the PNG, the segments and the confidence (host work)."""
        pixels = max(1, self.label_map.size)
        return LabeledImage(
            label_map_png=encode_label_png(self.label_map),
            segments=segments_from_label_map(
                self.label_map, self.score_sums, class_names, self.margin_sums, self.confidence_sums
            ),
            mean_confidence=float(self.confidence_sums.sum()) / pixels,
            mean_margin=float(self.margin_sums.sum()) / pixels,
            mean_raw_score=float(self.score_sums.sum()) / pixels,
            uncertain_fraction=self.uncertain_pixels / pixels,
            uncertainty_png=encode_png(self.margin_map) if self.margin_map is not None else None,
        )


@dataclass
class _DeviceMap:
    """A label map and its sums while still on the model's device."""

    label_map: torch.Tensor  # [H, W] int16: the uint16 ids' bits
    score_sums: torch.Tensor  # [bins] float64
    margin_sums: torch.Tensor  # [bins] float64
    uncertain: torch.Tensor  # [] int64
    margin_map: torch.Tensor | None  # [H, W] uint8
    confidence_sums: torch.Tensor  # [bins] float64


def posterior(scores: torch.Tensor, totals: torch.Tensor | None) -> torch.Tensor:
    """The winning class's score normalised over the vocabulary, in [0, 1] (1 for a tile made
    without totals, which `LabelTile` allows)."""
    if totals is None:
        return torch.ones_like(scores)
    return (scores / totals.clamp_min(1e-12)).clamp_(0, 1)


def label_maps(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    output_sizes: Sequence[tuple[int, int]],
    embeddings: torch.Tensor,
    class_ids: torch.Tensor,
    background: bool = True,
    precision: str = "fp32",
    uncertainty_map: bool = False,
    batched: bool | None = None,
) -> list[LabelMapArrays]:
    """Label uint8 RGB images [H, W, 3] (already at the model's input size) in one model call:
    the device's half of the job path.

    embeddings: [C, D] vocabulary embeddings; class_ids: [C] the taxonomy id of each row (0 for
    distractor prompts, which then count as unlabeled). Label maps are at `output_sizes`;
    precision is fp32, bf16 (autocast) or auto, as for `SAN.predict`; `uncertainty_map` adds
    each image's margin map. `batched` (by default: on a GPU) makes the label maps of images of
    one size together (`SAN.predict_label_batches`), the same labels up to float rounding in
    fewer device calls; else image by image and tile by tile, in bounded memory.
    """
    device = embeddings.device
    # uint8 to the device (a quarter of float32's bytes); the model normalises into its own batch
    tensors = [torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1) for image in images]
    bins = id_bins(class_ids)
    sizes = list(output_sizes)
    if batched is None:
        batched = device.type == "cuda"
    if batched:
        by_index: dict[int, _DeviceMap] = {}
        for indices, labels in model.predict_label_batches(tensors, embeddings, sizes, background, precision):
            by_index.update(
                zip(indices, collect_batch_on_device(labels, class_ids, bins, uncertainty_map), strict=True)
            )
        return to_host([by_index[i] for i in range(len(images))])
    per_image = model.predict_label_tiles(tensors, embeddings, sizes, background=background, precision=precision)
    return to_host(
        [
            collect_on_device(tiles, size, class_ids, bins, uncertainty_map)
            for tiles, size in zip(per_image, sizes, strict=True)
        ]
    )


def id_bins(class_ids: torch.Tensor) -> int:
    """How many taxonomy ids a map's sums count (the largest id + 1); read from the device once
    per batch, not per image."""
    return int(class_ids.max()) + 1 if len(class_ids) else 1


def collect_on_device(
    tiles: Iterable[LabelTile],
    size: tuple[int, int],
    class_ids: torch.Tensor,
    bins: int,
    uncertainty_map: bool = False,
) -> _DeviceMap:
    """A label map of taxonomy ids put together from a model's label tiles (class indices) on the
    tiles' device, with each id's summed score and margin (`bins` = `id_bins(class_ids)`), and
    the margin map if asked for. Nothing here waits for the device (the tiles themselves may:
    their pruning reads a few counts back)."""
    device = class_ids.device
    # int16 holds the uint16 ids' bits (ids over 32767 wrap, and are read back as uint16): CUDA
    # has no uint16 arithmetic
    label_map = torch.empty(size, dtype=torch.int16, device=device)
    margin_map = torch.empty(size, dtype=torch.uint8, device=device) if uncertainty_map else None
    sums = torch.zeros(bins, dtype=torch.float64, device=device)
    margins = torch.zeros(bins, dtype=torch.float64, device=device)
    confidences = torch.zeros(bins, dtype=torch.float64, device=device)
    uncertain = torch.zeros((), dtype=torch.int64, device=device)
    for tile in tiles:
        runner_up = tile.runner_up if tile.runner_up is not None else torch.zeros_like(tile.scores)
        margin = ((tile.scores - runner_up) / tile.scores.clamp_min(1e-12)).clamp_(0, 1)
        tile_sums = sums_per_id(
            tile.labels[None], class_ids, bins, (tile.scores, margin, posterior(tile.scores, tile.totals))
        )
        for total, tile_sum in zip((sums, margins, confidences), tile_sums, strict=True):
            total += tile_sum[0]
        uncertain += (margin < UNCERTAIN_MARGIN).sum()
        rows, cols = tile.labels.shape
        where = (slice(tile.top, tile.top + rows), slice(tile.left, tile.left + cols))
        label_map[where] = class_ids[tile.labels]
        if margin_map is not None:
            margin_map[where] = (margin * 255).round_()
    return _DeviceMap(label_map, sums, margins, uncertain, margin_map, confidences)


def collect_batch_on_device(
    batch: LabelBatch, class_ids: torch.Tensor, bins: int, uncertainty_map: bool = False
) -> list[_DeviceMap]:
    """`collect_on_device` for a batch of whole label maps ([B, H, W] class indices), in a few
    calls for the whole batch."""
    images = batch.labels.shape[0]
    margin = ((batch.scores - batch.runner_up) / batch.scores.clamp_min(1e-12)).clamp_(0, 1)
    sums, margins, confidences = sums_per_id(
        batch.labels, class_ids, bins, (batch.scores, margin, posterior(batch.scores, batch.totals))
    )
    uncertain = (margin < UNCERTAIN_MARGIN).flatten(1).sum(dim=1)
    label_maps = class_ids[batch.labels].to(torch.int16)  # the uint16 ids' bits, as collect_on_device keeps them
    margin_maps = (margin * 255).round_().to(torch.uint8) if uncertainty_map else None
    return [
        _DeviceMap(
            label_maps[i],
            sums[i],
            margins[i],
            uncertain[i],
            None if margin_maps is None else margin_maps[i],
            confidences[i],
        )
        for i in range(images)
    ]


# Copies of each sum that `sums_per_id` spreads one id's additions over on a GPU.
SUM_LANES = 32


def sums_per_id(
    labels: torch.Tensor, class_ids: torch.Tensor, bins: int, values: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Each of `values` ([B, H, W], like `labels`: class indices) summed per image and taxonomy
    id: [B, bins] float64 each (`bins` = `id_bins(class_ids)`).

    Summed per class first, then per id (a few classes may share one). On a GPU `index_add_`
    adds atomically, and an image's pixels mostly go to a few classes (with random weights, to
    one): a single sum per class would take its million additions one after another. There,
    pixel i adds into copy i % SUM_LANES of its class's sum, the copies far apart in memory, and
    the copies are added up after."""
    images, classes = labels.shape[0], len(class_ids)
    where = (labels.reshape(images, -1) + torch.arange(images, device=labels.device)[:, None] * classes).flatten()
    # copies no larger than the values they sum, whatever the vocabulary
    lanes = max(1, min(SUM_LANES if labels.is_cuda else 1, where.numel() // max(1, images * classes)))
    if lanes > 1:
        where = where + torch.arange(where.numel(), device=where.device) % lanes * (images * classes)
    per_id = []
    for value in values:
        spread = torch.zeros(lanes * images * classes, dtype=torch.float64, device=labels.device)
        per_class = spread.index_add_(0, where, value.flatten().double()).view(lanes, images, classes).sum(dim=0)
        per_id.append(
            torch.zeros(images, bins, dtype=torch.float64, device=labels.device).index_add_(1, class_ids, per_class)
        )
    return per_id


def to_host(maps: Sequence[_DeviceMap]) -> list[LabelMapArrays]:
    """Device maps -> host arrays. On a GPU every copy is queued at once into pinned memory and
    waited for once, so the device never idles between one image's copy and the next one's work;
    on a CPU the tensors are the arrays already."""

    def host(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "cpu":
            return tensor
        pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return pinned.copy_(tensor, non_blocking=True)

    copied = [
        (
            host(m.label_map),
            host(m.score_sums),
            host(m.margin_sums),
            host(m.uncertain),
            None if m.margin_map is None else host(m.margin_map),
            host(m.confidence_sums),
        )
        for m in maps
    ]
    if any(m.label_map.device.type == "cuda" for m in maps):
        torch.cuda.current_stream().synchronize()
    return [
        LabelMapArrays(
            label_map.numpy().view(np.uint16),
            sums.numpy(),
            margins.numpy(),
            int(uncertain),
            None if margin_map is None else margin_map.numpy(),
            confidences.numpy(),
        )
        for label_map, sums, margins, uncertain, margin_map, confidences in copied
    ]


def collect_label_map(
    tiles: Iterable[LabelTile], size: tuple[int, int], class_ids: torch.Tensor, uncertainty_map: bool = False
) -> LabelMapArrays:
    """`collect_on_device` for one image, brought to the host."""
    return to_host([collect_on_device(tiles, size, class_ids, id_bins(class_ids), uncertainty_map)])[0]


def label_images(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    output_sizes: Sequence[tuple[int, int]],
    embeddings: torch.Tensor,
    class_ids: torch.Tensor,
    class_names: Mapping[int, str],
    background: bool = True,
    precision: str = "fp32",
    uncertainty_map: bool = False,
) -> list[LabeledImage]:
    """The whole job path in this process: `label_maps`, then each map's PNG, segments and
    confidence (`LabelMapArrays.labeled_image`)."""
    arrays = label_maps(model, images, output_sizes, embeddings, class_ids, background, precision, uncertainty_map)
    return [a.labeled_image(class_names) for a in arrays]


def assemble_label_map(
    tiles: Iterable[LabelTile],
    size: tuple[int, int],
    class_ids: torch.Tensor,
    class_names: Mapping[int, str],
    uncertainty_map: bool = False,
) -> LabeledImage:
    """`collect_label_map`, then what a row stores of it, in this thread."""
    return collect_label_map(tiles, size, class_ids, uncertainty_map).labeled_image(class_names)
