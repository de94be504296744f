"""Convolutions that are matrix products, run as matrix products.

A 1x1 convolution maps every pixel's channels by one matrix, and a patch embedding (kernel =
stride, no padding) maps every non-overlapping patch by one matrix. oneDNN runs both as
convolutions, and on this project's 2-core CPU it took 1.0-1.7 ms for a [256 -> 256, 40x40] 1x1
map that one matrix product does in 0.6, after copying a non-contiguous input. The layers stay
`nn.Conv2d`, with the same parameters and names, so checkpoints, `Bf16Weights` and optimisers see
no difference. The sums run in another order than oneDNN's: equal up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution, [B, C_in, H, W] -> [B, C_out, H, W], as weight [C_out, C_in] @ pixels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        weight = self.weight.view(1, self.out_channels, channels).expand(batch, -1, -1)
        # bmm writes [B, C_out, H*W] as it is; matmul (2-D @ 3-D) multiplied the transposes and copied
        y = torch.bmm(weight, x.reshape(batch, channels, height * width))
        if self.bias is not None:
            # in the product's dtype, as a convolution under autocast adds it; bmm's backward
            # needs its inputs, not its output, so the sum can take its place
            y = y.add_(self.bias.to(y.dtype)[:, None])
        return y.view(batch, self.out_channels, height, width)


def patch_tokens(conv: nn.Conv2d, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """`conv` (a patch embedding: kernel = stride, no padding) over image [B, C, H, W] as one
    matrix product: tokens [B, h*w, C_out], row-major over the grid as the convolution's output
    flattened, and the grid (h, w). Pixels past the last whole patch are dropped, as the
    convolution drops them. The tokens come out in the layout the transformer takes, with no
    transpose to copy."""
    if conv.stride != conv.kernel_size or conv.padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1:
        raise ValueError(f"not a patch embedding: {conv}")
    patch_h, patch_w = conv.kernel_size
    batch, channels, height, width = image.shape
    grid = (height // patch_h, width // patch_w)
    image = image[:, :, : grid[0] * patch_h, : grid[1] * patch_w]
    patches = image.reshape(batch, channels, grid[0], patch_h, grid[1], patch_w)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid[0] * grid[1], channels * patch_h * patch_w)
    tokens = torch.matmul(patches, conv.weight.view(conv.out_channels, -1).t())
    if conv.bias is not None:
        tokens = tokens.add_(conv.bias.to(tokens.dtype))
    return tokens, grid
