"""Turn per-query outputs into per-class score maps and label maps, as the reference's inference.

The reference upsamples the mask logits to the padded input size, crops the padding, resizes to
the requested output size (both bilinear), applies the sigmoid and sums softmax class
probabilities (background dropped) times mask probabilities over queries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial

import torch
from torch.nn import functional as F

# Elements of the largest tensor one label tile computes ([tile pixels, classes or queries]):
# 8M float32 is 32 MiB, so a tile's working set stays near 100 MiB at any output size.
MAX_CHUNK_ELEMENTS = 1 << 23
# A GPU pays for every small launch and host sync and has memory to spare: its tiles are 16 times
# larger (512 MiB for the largest tensor), so a 640x960 image takes one tile at ADE-150.
MAX_CHUNK_ELEMENTS_GPU = 1 << 27
# Classes a label tile scores first, beside each query's two likeliest: the tile's likeliest by
# their upper bound. When no other class can reach the second place, these scores are the answer.
TILE_ANCHORS = 8
# Side, in output pixels, of the square blocks a label tile's pruning test is taken again over
# when the whole tile's test leaves classes to score: a bound and a floor per block are tighter.
PRUNING_BLOCK = 32
# Slack for float rounding in the pruning tests' comparisons; it only ever keeps more classes.
BOUND_SLACK = 1e-5
# The largest output height the fused kernel takes: its grid's second side, at most 65535, counts
# blocks of 32 rows.
FUSED_MAX_ROWS = 65535 * 32

logger = logging.getLogger(__name__)


def chunk_elements_for(device: torch.device) -> int:
    """The default tile budget of label maps computed on `device`."""
    return MAX_CHUNK_ELEMENTS if device.type == "cpu" else MAX_CHUNK_ELEMENTS_GPU


def semantic_scores(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    background: bool = True,
) -> torch.Tensor:
    """class_logits [Q, C(+1)], mask_logits [Q, h, w] (side-adapter grid) -> scores [C, H_out, W_out]."""
    masks = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    masks = masks[:, :, : input_size[0], : input_size[1]]
    masks = F.interpolate(masks, size=output_size, mode="bilinear", align_corners=False)[0].sigmoid()
    probs = class_probabilities(class_logits, background).to(masks)
    return torch.einsum("qc,qhw->chw", probs, masks)


def class_probabilities(class_logits: torch.Tensor, background: bool) -> torch.Tensor:
    probs = F.softmax(class_logits, dim=-1)
    return probs[..., :-1] if background else probs


def resize_matrix(size_in: int, size_out: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[size_out, size_in] weights of PyTorch's linear interpolation (align_corners=False)."""
    eye = torch.eye(size_in, dtype=dtype)[None]  # channel i holds the unit impulse at i
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[0].T


@lru_cache(maxsize=64)  # a collection has few distinct sizes; callers copy it with .to() and never write it
def composite_resize_matrix(grid: int, padded: int, valid: int, output: int) -> torch.Tensor:
    """One axis of upsample(grid -> padded), crop to `valid`, resize(valid -> output): [output, grid]."""
    return resize_matrix(valid, output) @ resize_matrix(grid, padded)[:valid]


def nonzero_bands(matrix: torch.Tensor) -> tuple[list[int], list[int]]:
    """Per row of a resize matrix [out, in], its first and one-past-last nonzero column: each
    output value interpolates only the few input values in that band."""
    nonzero = (matrix != 0).to(torch.int8)
    first = nonzero.argmax(dim=1)
    end = matrix.shape[1] - nonzero.flip(1).argmax(dim=1)
    return first.tolist(), end.tolist()


@lru_cache(maxsize=64)
def resize_matrix_on(
    grid: int, padded: int, valid: int, output: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """`composite_resize_matrix` on `device` in `dtype`, kept (callers never write it): copying it
    from host memory for every image made each label map on a GPU wait until the device had
    finished all the work queued before it."""
    return composite_resize_matrix(grid, padded, valid, output).to(device, dtype)


@lru_cache(maxsize=64)
def composite_resize_bands(grid: int, padded: int, valid: int, output: int) -> tuple[list[int], list[int]]:
    """`nonzero_bands` of `composite_resize_matrix`."""
    return nonzero_bands(composite_resize_matrix(grid, padded, valid, output))


def resize_columns(mask_logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """mask_logits [Q, h, w] resized along their columns by `columns` [W, w] -> [h, W * Q],
    pixel-major (each grid row's W pixels, Q values each). One batched product over the grid rows
    writes this layout directly; an einsum wrote [Q * h, W] and copied it over."""
    return torch.matmul(columns, mask_logits.permute(1, 2, 0)).view(mask_logits.shape[1], -1)


@dataclass
class LabelTile:
    """One rectangle of a label map, its top-left corner at (top, left) of the output."""

    top: int
    left: int
    labels: torch.Tensor  # [rows, cols] int64 class indices
    scores: torch.Tensor  # [rows, cols] the winning class's score
    runner_up: torch.Tensor | None = None  # [rows, cols] the second-best class's score (0 with one class)
    totals: torch.Tensor | None = None  # [rows, cols] every class's score summed: scores / totals is a posterior


@torch.no_grad()  # also while a caller iterates, outside the model's own no_grad
def semantic_label_tiles(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    background: bool = True,
    max_chunk_elements: int | None = None,
) -> Iterator[LabelTile]:
    """The argmax of `semantic_scores` and its value, tile by tile, never materialising
    [C, H_out, W_out]: memory is bounded by `max_chunk_elements` (by default
    `chunk_elements_for` the device) whatever the output size.

    Both bilinear resizes are linear maps per axis, so the mask logits at the output size are
    A_y @ M_q @ A_x^T with small composite matrices; tiles are produced column block by column
    block, row block by row block. Inside a tile everything is pixel-major ([pixels, Q], then
    [pixels, C]): the row resize is one matrix product over every query at once and the argmax
    runs along contiguous memory.

    Each tile also carries the runner-up's score, so the top-two margin (how sure a pixel is)
    costs one more comparison per pixel, not another pass, and every class's score summed (the
    normaliser of the winner's posterior): the sum over classes of probability times mask is the
    sum over queries of mask times the query's class mass (1 - its no-object probability), one
    more product with a [Q] vector, whatever the vocabulary.

    A tile's row resize multiplies only the band of grid rows its pixels interpolate from (a
    bilinear resize has a few nonzero weights per row), not the whole grid.

    Large vocabularies are pruned exactly: every resized mask logit is a convex combination of
    grid values (the weights are nonnegative and sum to one), so in a tile a class's score is at
    most the sum over queries of its probability times the sigmoid of the query's largest value in
    the tile's band. A few anchor classes are scored at every pixel of the tile first (each
    query's two likeliest and the tile's likeliest by bound): only classes whose bound reaches the
    anchors' second-best score at every pixel can be first or second there. When those are all
    anchors, the anchors' top two is the answer; otherwise the remaining candidates are scored.
    """
    queries, grid_h, grid_w = mask_logits.shape
    out_h, out_w = output_size
    dtype, device = mask_logits.dtype, mask_logits.device
    max_chunk_elements = max_chunk_elements or chunk_elements_for(device)
    a_y = resize_matrix_on(grid_h, padded_size[0], input_size[0], out_h, device, dtype)
    band_first, band_end = composite_resize_bands(grid_h, padded_size[0], input_size[0], out_h)
    a_x = resize_matrix_on(grid_w, padded_size[1], input_size[1], out_w, device, dtype)
    probs = class_probabilities(class_logits, background).to(dtype).contiguous()  # [Q, C]
    mass = probs.sum(dim=1)  # [Q] each query's probability over the vocabulary
    num_classes = probs.shape[1]
    anchors = query_anchors(probs)
    widest = pruned_tile_columns(queries, num_classes, anchors)
    # the widest column block whose half-resized masks [h, cols, Q] fit the budget
    cols = max(1, min(out_w, max_chunk_elements // max(1, queries * grid_h)))
    for left in range(0, out_w, cols):
        right = min(out_w, left + cols)
        width = right - left
        half = resize_columns(mask_logits, a_x[left:right])  # [h, width * Q]
        rows = max(1, max_chunk_elements // max(1, widest * width))
        # one buffer for the column block's row tiles: a fresh [pixels, Q] tensor per tile (32 MiB
        # at the default budget) is mapped anew by the allocator and faulted in page by page,
        # which took a third of a label map's time (coffee, 960x640: 110 -> 62 ms)
        buffer = half.new_empty(min(rows, out_h), width * queries)
        for top in range(0, out_h, rows):
            bottom = min(out_h, top + rows)
            first, end = min(band_first[top:bottom]), max(band_end[top:bottom])
            band = half[first:end]  # [band rows, width * Q], the grid rows this tile interpolates
            masks = torch.mm(a_y[top:bottom, first:end], band, out=buffer[: bottom - top])
            masks = masks.view(-1, queries).sigmoid_()  # [pixels, Q]
            ceiling = band.view(-1, queries).amax(dim=0).sigmoid()  # [Q] no pixel's mask is higher
            blocks = partial(tile_blocks, half, band_first, band_end, top, bottom, width, queries)
            best, index, runner_up = top_two_pruned(masks, probs, ceiling, anchors, max_chunk_elements, blocks)
            shape = (bottom - top, width)
            totals = torch.mv(masks, mass).view(shape)
            yield LabelTile(top, left, index.view(shape), best.view(shape), runner_up.view(shape), totals)


@dataclass
class TileBlocks:
    """A label tile cut into square blocks, each with an upper bound of every query's mask at
    its pixels."""

    ceilings: torch.Tensor  # [blocks, Q], the blocks row-major over the tile
    shape: tuple[int, int]  # the tile's (rows, cols)
    size: int  # a block's side (the last row and column of blocks may be cut short)

    def reaching(self, classes: torch.Tensor, probs: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The `classes` whose bound reaches, in some block, the lowest of `second` ([pixels],
        row-major over the tile: a lower bound of each pixel's second-best score) there."""
        floors = -F.max_pool2d(-second.view(1, 1, *self.shape), self.size, ceil_mode=True).flatten()
        bounds = self.ceilings @ probs[:, classes]  # [blocks, classes]
        return classes[(bounds >= floors[:, None] - BOUND_SLACK).any(dim=0)]


def tile_blocks(
    half: torch.Tensor, band_first: list[int], band_end: list[int], top: int, bottom: int, width: int, queries: int
) -> TileBlocks:
    """The `PRUNING_BLOCK` blocks of the tile of output rows top..bottom, from `half` ([grid rows,
    width * Q]: the masks resized along the columns only). A pixel's mask is a convex combination
    of the grid rows in its row's band, so the largest of those rows' values at the block's
    columns, after the sigmoid, bounds it."""
    size = PRUNING_BLOCK
    short = -width % size  # the last column block's missing columns
    ceilings = []
    for start in range(top, bottom, size):
        stop = min(bottom, start + size)
        first, end = min(band_first[start:stop]), max(band_end[start:stop])
        rows_max = half[first:end].view(end - first, width, queries).amax(dim=0)  # [width, Q]
        rows_max = F.pad(rows_max, (0, 0, 0, short), value=-torch.inf)
        ceilings.append(rows_max.view(-1, size, queries).amax(dim=1))  # [column blocks, Q]
    return TileBlocks(torch.cat(ceilings).sigmoid_(), (bottom - top, width), size)


def query_anchors(probs: torch.Tensor) -> torch.Tensor:
    """probs [Q, C] -> the classes every label tile scores first: each query's two likeliest."""
    return torch.unique(probs.topk(min(2, probs.shape[1]), dim=1).indices)


def pruned_tile_columns(queries: int, num_classes: int, anchors: torch.Tensor) -> int:
    """The widest per-pixel row `top_two_pruned` holds at once: [pixels, Q] masks and [pixels,
    anchors] scores. Other classes' scores are taken in pixel chunks, so tiles are sized by this,
    not by the vocabulary, and a large vocabulary does not make them thin."""
    return max(queries, min(num_classes, len(anchors) + TILE_ANCHORS))


def top_two_pruned(
    masks: torch.Tensor,
    probs: torch.Tensor,
    ceiling: torch.Tensor,
    anchors: torch.Tensor,
    max_elements: int,
    blocks: Callable[[], TileBlocks] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`top_two(masks @ probs)` for one tile (masks [pixels, Q], probs [Q, C]) without scoring every
    class at every pixel. `ceiling` [Q] is at least each query's largest mask value in the tile, so
    `ceiling @ probs` bounds each class's score there. The anchors and the tile's likeliest classes
    by that bound are scored first; only a class whose bound reaches the lowest second-best score
    among them can be first or second anywhere. If some were not scored and `blocks` is given, the
    test is taken again over the tile's blocks (`TileBlocks.reaching`), which often drops them
    all. When all such classes were scored, their top two is the answer; otherwise the others are
    scored too, in pixel chunks within `max_elements`, and the two top twos merged."""
    num_classes = probs.shape[1]
    if num_classes < 2:
        return top_two(masks @ probs)
    upper_bound = ceiling @ probs  # [C]
    likeliest = upper_bound.topk(min(TILE_ANCHORS, num_classes)).indices
    tile_anchors = torch.unique(torch.cat([anchors, likeliest]))
    best, column, runner_up = top_two(masks @ probs[:, tile_anchors])
    floor = runner_up.min()  # every pixel's second best scores at least this
    candidates = torch.nonzero(upper_bound >= floor - BOUND_SLACK).squeeze(1)
    others = candidates[~torch.isin(candidates, tile_anchors)]
    if len(others) and blocks is not None:  # costs about a sixth of scoring them
        others = blocks().reaching(others, probs, runner_up)
    index = tile_anchors[column]
    if len(others) == 0:  # first and second are anchors
        return best, index, runner_up
    # the top two of the anchors and of the others, merged
    return merge_top_two((best, index, runner_up), top_two_of_product(masks, probs[:, others], max_elements), others)


def top_two_of_product(
    masks: torch.Tensor, probs: torch.Tensor, max_elements: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`top_two(masks @ probs)` ([pixels, Q] x [Q, C]), taken over pixel chunks whose [pixels, C]
    scores stay within `max_elements`."""
    step = max(1, max_elements // max(1, probs.shape[1]))
    # one buffer for every chunk's scores: a fresh one per chunk left the allocator holding
    # gigabytes of them in a fresh process (6,000 classes: 2.4-2.8 GB of peak RSS, not 16 MB)
    scores = masks.new_empty(min(step, masks.shape[0]), probs.shape[1])
    parts = []
    for start in range(0, masks.shape[0], step):
        chunk = masks[start : start + step]
        parts.append(top_two(torch.mm(chunk, probs, out=scores[: len(chunk)])))
    if len(parts) == 1:
        return parts[0]
    best, index, runner_up = (torch.cat(column) for column in zip(*parts, strict=True))
    return best, index, runner_up


def top_two(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores [pixels, C] -> (best score, its column, second-best score), each [pixels]; the
    column is the first of equal bests, as argmax's; with one column the second best is 0 (no
    rival). Overwrites each row's best in `scores` (callers pass a product they then drop): a
    max, a scatter and another max take half the time of `topk(2)` over rows this short (8 to 16
    columns: 1.3 against 2.6 ms for 84k pixels by 8)."""
    best, index = scores.max(dim=1)
    if scores.shape[1] < 2:
        return best, index, torch.zeros_like(best)
    return best, index, scores.scatter_(1, index[:, None], -torch.inf).amax(dim=1)


# Classes a batched label map scores at every pixel first: the likeliest by their upper bound.
BATCH_ANCHORS = 32
# Output pixels of one batched label map call ([B, H, W] labels, scores and runner-up scores: 16
# bytes a pixel); a larger batch is cut into calls of at most this many pixels.
MAX_BATCH_PIXELS = 1 << 26


@dataclass
class LabelBatch:
    """Label maps of a batch of images that share their padded, input and output sizes."""

    labels: torch.Tensor  # [B, H, W] int64 class indices
    scores: torch.Tensor  # [B, H, W] the winning class's score
    runner_up: torch.Tensor  # [B, H, W] the second-best class's score (0 with one class)
    totals: torch.Tensor  # [B, H, W] every class's score summed (see LabelTile)


@torch.no_grad()
def batched_label_maps(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    background: bool = True,
    max_chunk_elements: int | None = None,
) -> LabelBatch:
    """`semantic_label_tiles` for B images of one size at once, for a GPU: class_logits
    [B, Q, C(+1)], mask_logits [B, Q, h, w] -> whole label maps [B, H_out, W_out].

    The same arithmetic (the two resizes as products, the sigmoid, the top two of probabilities
    times masks), with the same exactness, in fewer and larger device calls: one image at a time,
    a GPU spends its time launching kernels and waiting for the counts that pruning reads back.
    Rows are taken in blocks whose masks [B, pixels, Q] fit `max_chunk_elements`. In each block
    every image's BATCH_ANCHORS likeliest classes by their upper bound are scored at every pixel;
    a class outside them is scored too only in an image where its bound reaches that image's
    lowest second-best score in the block, which one read-back per block tells. (Scoring every
    class of every image instead, whenever one image needed more, was slower on an H200 with the
    flat probabilities of random weights: 164 against 205 images/s with the networks, bf16.)
    """
    batch, queries, grid_h, grid_w = mask_logits.shape
    out_h, out_w = output_size
    dtype, device = mask_logits.dtype, mask_logits.device
    max_chunk_elements = max_chunk_elements or chunk_elements_for(device)
    a_y = resize_matrix_on(grid_h, padded_size[0], input_size[0], out_h, device, dtype)
    band_first, band_end = composite_resize_bands(grid_h, padded_size[0], input_size[0], out_h)
    a_x = resize_matrix_on(grid_w, padded_size[1], input_size[1], out_w, device, dtype)
    probs = class_probabilities(class_logits, background).to(dtype).contiguous()  # [B, Q, C]
    mass = probs.sum(dim=2, keepdim=True)  # [B, Q, 1] each query's probability over the vocabulary
    num_classes = probs.shape[2]
    anchors_per_image = min(num_classes, BATCH_ANCHORS)
    # the masks resized along the columns: [B, h, W * Q], each grid row's W pixels, Q values each
    half = torch.matmul(a_x, mask_logits.permute(0, 2, 3, 1)).view(batch, grid_h, out_w * queries)
    labels = torch.empty((batch, out_h, out_w), dtype=torch.int64, device=device)
    scores = torch.empty((batch, out_h, out_w), dtype=dtype, device=device)
    runner_up = torch.empty_like(scores)
    totals = torch.empty_like(scores)
    rows = max(1, max_chunk_elements // max(1, batch * out_w * queries))
    for top in range(0, out_h, rows):
        bottom = min(out_h, top + rows)
        first, end = min(band_first[top:bottom]), max(band_end[top:bottom])
        band = half[:, first:end]  # [B, band rows, W * Q]
        masks = torch.matmul(a_y[top:bottom, first:end], band).view(batch, -1, queries).sigmoid_()  # [B, P, Q]
        ceiling = band.reshape(batch, -1, queries).amax(dim=1).sigmoid()  # [B, Q] no mask in the block is higher
        upper_bound = torch.bmm(ceiling[:, None], probs)[:, 0]  # [B, C]
        # ascending, so that equal best scores go to the lower class, as argmax's
        anchors = upper_bound.topk(anchors_per_image, dim=1).indices.sort(dim=1).values  # [B, K]
        chosen = probs.gather(2, anchors[:, None].expand(-1, queries, -1))  # [B, Q, K]
        best, column, second = top_two(torch.bmm(masks, chosen).view(-1, anchors_per_image))
        best, second = best.view(batch, -1), second.view(batch, -1)  # [B, P]
        index = anchors.gather(1, column.view(batch, -1))
        floor = second.amin(dim=1)  # every pixel's second best scores at least this
        reaching = upper_bound.scatter(1, anchors, -torch.inf) >= floor[:, None] - BOUND_SLACK  # [B, C]
        if anchors_per_image < num_classes and bool(reaching.any()):  # one read-back a block
            for image in torch.nonzero(reaching.any(dim=1)).flatten().tolist():
                others = torch.nonzero(reaching[image]).flatten()
                best[image], index[image], second[image] = merge_top_two(
                    (best[image], index[image], second[image]),
                    top_two_of_product(masks[image], probs[image][:, others], max_chunk_elements),
                    others,
                )
        shape = (batch, bottom - top, out_w)
        labels[:, top:bottom] = index.view(shape)
        scores[:, top:bottom] = best.view(shape)
        runner_up[:, top:bottom] = second.view(shape)
        totals[:, top:bottom] = torch.bmm(masks, mass).view(shape)
    return LabelBatch(labels, scores, runner_up, totals)


def label_batch(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    background: bool = True,
) -> LabelBatch:
    """The label maps of B images of one size: on a GPU, through the fused kernel
    (`fused_label_maps`), which never writes the masks at the output size; elsewhere, or where
    Triton is missing or its kernel failed once in this process (logged), `batched_label_maps`.
    Both give the same labels up to float rounding."""
    classes = class_logits.shape[-1] - (1 if background else 0)
    fused = _fused_label_maps() if mask_logits.is_cuda and classes >= 2 and output_size[0] <= FUSED_MAX_ROWS else None
    if fused is not None:
        if _FUSED_STATE["worked"]:
            return fused(class_logits, mask_logits, padded_size, input_size, output_size, background)
        try:  # the first call compiles the kernel for this GPU
            labels = fused(class_logits, mask_logits, padded_size, input_size, output_size, background)
            _FUSED_STATE["worked"] = True
            return labels
        except Exception as error:  # noqa: BLE001 - any compiler or driver failure: PyTorch's way works
            logger.warning(
                "the fused label-map kernel failed (%s: %s); using batched_label_maps", type(error).__name__, error
            )
            _FUSED_STATE["failed"] = True
    return batched_label_maps(class_logits, mask_logits, padded_size, input_size, output_size, background)


# Whether the fused kernel has run in this process, or failed (then it is not tried again).
_FUSED_STATE = {"worked": False, "failed": False}


def _fused_label_maps() -> Callable[..., LabelBatch] | None:
    if _FUSED_STATE["failed"]:
        return None
    try:
        from .fused_label_maps import fused_label_maps
    except ImportError:  # PyTorch without Triton (its CPU builds)
        _FUSED_STATE["failed"] = True
        return None
    return fused_label_maps


def merge_top_two(
    first: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    other: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    other_classes: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top two of two disjoint sets of classes from each one's (best, index, runner-up); the
    other's indices are positions in `other_classes`. A tie for first stays with `first` (scores
    are >= 0, as `top_two`'s runner-up 0 is)."""
    best, index, runner_up = first
    other_best, other_index, other_second = other
    other_wins = other_best > best
    return (
        torch.where(other_wins, other_best, best),
        torch.where(other_wins, other_classes[other_index], index),
        torch.where(other_wins, torch.maximum(best, other_second), torch.maximum(runner_up, other_best)),
    )


def semantic_labels(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    background: bool = True,
    max_chunk_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`semantic_label_tiles` assembled: labels [H_out, W_out] (int64 class indices) and their
    scores [H_out, W_out]."""
    labels = torch.empty(output_size, dtype=torch.int64, device=mask_logits.device)
    scores = torch.empty(output_size, dtype=mask_logits.dtype, device=mask_logits.device)
    for tile in semantic_label_tiles(
        class_logits, mask_logits, padded_size, input_size, output_size, background, max_chunk_elements
    ):
        rows, cols = tile.labels.shape
        labels[tile.top : tile.top + rows, tile.left : tile.left + cols] = tile.labels
        scores[tile.top : tile.top + rows, tile.left : tile.left + cols] = tile.scores
    return labels, scores
