"""Label maps of a batch in one fused GPU kernel: `batched_label_maps`' arithmetic without
materialising the masks at the output size.

`batched_label_maps` writes every query's mask at every output pixel ([B, pixels, Q] float32,
400 bytes a pixel with 100 queries), passes over it for the sigmoid, the anchors' product and
the class mass, and then over the anchors' scores for their top two: some 2.5 kB of memory traffic
per pixel. Here one Triton program takes one block of 32 output rows by 64 columns, row by row:
it interpolates the masks from the column-resized grid (`half`, a few grid rows per output
row), applies the sigmoid, multiplies by the anchor classes' probabilities and keeps the top two
and the class mass in registers, writing 20 bytes a pixel (label, best, runner-up, total).

Exactness is `batched_label_maps`': the anchors are chosen per pruning block of
`BLOCK_ROWS` x `BLOCK_COLS` output pixels (the likeliest classes by their upper bound there, the
same bound as the tiles'), and a block where a class outside its anchors could still be first or
second (its bound reaches the block's lowest second-best score) is scored again with those
classes in PyTorch and merged. With 32 x 64 blocks and 32 anchors, 0.4 % of the blocks of random-
weight `san-vit-b16` maps at 1.2 Mpx needed that (the 2-D blocks bound tighter than whole rows).

The products run as `tl.dot` in "tf32x3" (three TF32 products that keep float32's precision) on
GPUs with TF32 tensor cores and "ieee" elsewhere: the scores agree with PyTorch's float32 ones to
float rounding, as `batched_label_maps`' do with the tiles'. Off a GPU the kernel runs only under
Triton's interpreter (TRITON_INTERPRET=1), which the tests use.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl
from torch.nn import functional as F

from .postprocess import (
    BOUND_SLACK,
    LabelBatch,
    class_probabilities,
    composite_resize_bands,
    merge_top_two,
    resize_matrix_on,
    top_two_of_product,
)

# A pruning block, output rows by output columns: one program of the kernel.
BLOCK_ROWS = 32
BLOCK_COLS = 64
# Classes each block scores in the kernel: its likeliest by their upper bound.
KERNEL_ANCHORS = 32
# Queries a program multiplies at once (tl.dot needs at least 16 along each side).
QUERY_CHUNK = 16
# Pixels of one fallback block's [pixels, classes] scores, as `top_two_of_product` takes them.
FALLBACK_ELEMENTS = 1 << 22


@triton.jit
def _anchor_top_two(
    half_ptr,  # [B, Q, h, W] float32: the mask logits resized along the columns
    row_first_ptr,  # [H] int32: the first grid row each output row interpolates
    row_weights_ptr,  # [H, TAPS] float32: its weights (0 past its band)
    probs_ptr,  # [B, Q, C] float32 class probabilities
    mass_ptr,  # [B, Q] float32: each query's probability over the vocabulary
    anchors_ptr,  # [B, blocks down, blocks across, K] int32 class indices, ascending, -1 for none
    labels_ptr,  # [B, H, W] int64 out
    best_ptr,  # [B, H, W] float32 out
    second_ptr,  # [B, H, W] float32 out
    totals_ptr,  # [B, H, W] float32 out
    grid_h,
    out_h,
    out_w,
    queries,
    classes,
    blocks_down,
    blocks_across,
    TAPS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
    QUERY_CHUNK: tl.constexpr,
    K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One pruning block: its rows one after another, so that the grid rows one output row
    interpolates from are still in the cache for the next (some 20 output rows share each)."""
    across = tl.program_id(0)
    down = tl.program_id(1)
    image = tl.program_id(2)
    x = across * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    in_row = x < out_w
    k = tl.arange(0, K)
    block = (image * blocks_down + down) * blocks_across + across
    anchors = tl.load(anchors_ptr + block * K + k)
    for y in range(down * BLOCK_ROWS, tl.minimum(down * BLOCK_ROWS + BLOCK_ROWS, out_h)):
        first = tl.load(row_first_ptr + y)
        scores = tl.zeros((BLOCK_COLS, K), dtype=tl.float32)
        totals = tl.zeros((BLOCK_COLS,), dtype=tl.float32)
        for start in range(0, queries, QUERY_CHUNK):
            q = start + tl.arange(0, QUERY_CHUNK)
            in_q = q < queries
            logits = tl.zeros((BLOCK_COLS, QUERY_CHUNK), dtype=tl.float32)
            for tap in tl.static_range(TAPS):
                weight = tl.load(row_weights_ptr + y * TAPS + tap)
                row = tl.minimum(first + tap, grid_h - 1)  # past the band the weight is 0
                offsets = ((image * queries + q[None, :]) * grid_h + row) * out_w + x[:, None]
                logits += weight * tl.load(half_ptr + offsets, mask=in_row[:, None] & in_q[None, :], other=0.0)
            masks = tl.where(in_q[None, :], tl.sigmoid(logits), 0.0)  # [pixels, queries]
            probs = tl.load(
                probs_ptr + (image * queries + q[:, None]) * classes + anchors[None, :],
                mask=in_q[:, None] & (anchors[None, :] >= 0),
                other=0.0,
            )
            scores = tl.dot(masks, probs, scores, input_precision=PRECISION)
            mass = tl.load(mass_ptr + image * queries + q, mask=in_q, other=0.0)
            totals += tl.sum(masks * mass[None, :], axis=1)
        best = tl.max(scores, axis=1)
        column = tl.argmax(scores, axis=1, tie_break_left=True)  # anchors ascend: ties go to the lower class
        second = tl.max(tl.where(k[None, :] == column[:, None], -float("inf"), scores), axis=1)
        labels = tl.load(anchors_ptr + block * K + column)
        out = (image * out_h + y) * out_w + x
        tl.store(labels_ptr + out, labels.to(tl.int64), mask=in_row)
        tl.store(best_ptr + out, best, mask=in_row)
        tl.store(second_ptr + out, second, mask=in_row)
        tl.store(totals_ptr + out, totals, mask=in_row)


def dot_precision(device: torch.device) -> str:
    """tl.dot's input precision: float32 through TF32 tensor cores where there are some."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0):
        return "tf32x3"
    return "ieee"


@lru_cache(maxsize=64)  # few sizes; callers never write them
def row_taps(
    grid: int, padded: int, valid: int, output: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The row resize as taps: each output row's first grid row [H] int32 and its weights
    [H, taps] float32, zero past the row's band."""
    first, end = composite_resize_bands(grid, padded, valid, output)
    matrix = resize_matrix_on(grid, padded, valid, output, torch.device("cpu"), torch.float32)
    taps = max(e - f for f, e in zip(first, end, strict=True))
    weights = torch.zeros(output, taps)
    for y, (f, e) in enumerate(zip(first, end, strict=True)):
        weights[y, : e - f] = matrix[y, f:e]
    return torch.tensor(first, dtype=torch.int32, device=device), weights.to(device)


@torch.no_grad()
def fused_label_maps(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    background: bool = True,
) -> LabelBatch:
    """`batched_label_maps` through the fused kernel: class_logits [B, Q, C(+1)], mask_logits
    [B, Q, h, w] float32 -> whole label maps [B, H_out, W_out]. Needs at least two classes."""
    batch, queries, grid_h, grid_w = mask_logits.shape
    out_h, out_w = output_size
    device = mask_logits.device
    probs = class_probabilities(class_logits, background).float().contiguous()  # [B, Q, C]
    classes = probs.shape[2]
    if classes < 2:
        raise ValueError("the fused label maps need two classes or more")
    mass = probs.sum(dim=2).contiguous()  # [B, Q]
    a_x = resize_matrix_on(grid_w, padded_size[1], input_size[1], out_w, device, torch.float32)
    half = torch.matmul(mask_logits.float(), a_x.T).contiguous()  # [B, Q, h, W]
    row_first, row_weights = row_taps(grid_h, padded_size[0], input_size[0], out_h, device)
    band_first, band_end = composite_resize_bands(grid_h, padded_size[0], input_size[0], out_h)

    # each block's ceiling: the sigmoid of the largest logit any of its pixels interpolates from
    blocks_down, blocks_across = -(-out_h // BLOCK_ROWS), -(-out_w // BLOCK_COLS)
    column_max = F.max_pool1d(half.view(-1, 1, out_w), BLOCK_COLS, ceil_mode=True)  # [B * Q * h, 1, across]
    column_max = column_max.view(batch, queries, grid_h, blocks_across)
    ceilings = torch.stack(
        [
            column_max[:, :, min(band_first[top : top + BLOCK_ROWS]) : max(band_end[top : top + BLOCK_ROWS])].amax(2)
            for top in range(0, out_h, BLOCK_ROWS)
        ],
        dim=2,
    ).sigmoid()  # [B, Q, down, across]
    blocks = blocks_down * blocks_across
    upper_bound = torch.bmm(ceilings.view(batch, queries, blocks).transpose(1, 2), probs)  # [B, blocks, C]
    anchor_count = min(classes, KERNEL_ANCHORS)
    width = max(16, triton.next_power_of_2(anchor_count))  # tl.dot's smallest side
    anchors = upper_bound.topk(anchor_count, dim=2).indices.sort(dim=2).values  # ascending, as argmax breaks ties
    padded_anchors = F.pad(anchors, (0, width - anchor_count), value=-1).to(torch.int32).contiguous()

    labels = torch.empty((batch, out_h, out_w), dtype=torch.int64, device=device)
    best = torch.empty((batch, out_h, out_w), dtype=torch.float32, device=device)
    second, totals = torch.empty_like(best), torch.empty_like(best)
    _anchor_top_two[(blocks_across, blocks_down, batch)](
        half, row_first, row_weights, probs, mass, padded_anchors, labels, best, second, totals,
        grid_h, out_h, out_w, queries, classes, blocks_down, blocks_across,
        TAPS=row_weights.shape[1], BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS,
        QUERY_CHUNK=QUERY_CHUNK, K=width, PRECISION=dot_precision(device),
    )  # fmt: skip

    # the blocks where a class outside the anchors could be first or second: scored again
    floors = -F.max_pool2d(-second[:, None], (BLOCK_ROWS, BLOCK_COLS), ceil_mode=True)  # [B, 1, down, across]
    outside = upper_bound.scatter(2, anchors, -torch.inf)
    reaching = outside >= floors.view(batch, blocks, 1) - BOUND_SLACK  # [B, blocks, C]
    flagged = torch.nonzero(reaching.any(dim=2)).tolist()  # the batch's one read-back
    a_y = resize_matrix_on(grid_h, padded_size[0], input_size[0], out_h, device, torch.float32)
    for image, block in flagged:
        top, left = block // blocks_across * BLOCK_ROWS, block % blocks_across * BLOCK_COLS
        rows, cols = slice(top, min(out_h, top + BLOCK_ROWS)), slice(left, min(out_w, left + BLOCK_COLS))
        others = torch.nonzero(reaching[image, block]).flatten()
        first, end = min(band_first[rows]), max(band_end[rows])
        masks = torch.einsum("rh,qhc->rcq", a_y[rows, first:end], half[image, :, first:end, cols])
        masks = masks.reshape(-1, queries).sigmoid_()  # [pixels, Q]
        merged = merge_top_two(
            (
                best[image, rows, cols].flatten(),
                labels[image, rows, cols].flatten(),
                second[image, rows, cols].flatten(),
            ),
            top_two_of_product(masks, probs[image][:, others], FALLBACK_ELEMENTS),
            others,
        )
        for out, value in zip((best, labels, second), merged, strict=True):
            out[image, rows, cols] = value.view(out[image, rows, cols].shape)
    return LabelBatch(labels, best, second, totals)
