"""The frozen CLIP feature extractor: CLIP's first blocks, run once per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from open_clip.transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

from .clip_blocks import block_forward
from .derived_cache import DerivedTensor
from .matrix_convs import patch_tokens


@dataclass
class ClipFeatures:
    """Outputs of CLIP's embedding (index 0) and of each of its first blocks (1..k).

    maps[i]: [B, width, h, w] patch tokens as a feature map.
    cls_tokens[i]: [B, width] the class token.
    """

    maps: list[torch.Tensor]
    cls_tokens: list[torch.Tensor]

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.maps[0].shape[-2:]
        return int(h), int(w)


def resize_grid_pos_embed(
    pos_embed: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], num_prefix: int
) -> torch.Tensor:
    """Bicubically resize the grid part of a [prefix + H*W, C] positional embedding to dst_grid."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos_embed
    prefix, grid = pos_embed[:num_prefix], pos_embed[num_prefix:]
    grid = grid.transpose(0, 1).reshape(1, -1, *src_grid)
    grid = F.interpolate(grid, size=dst_grid, mode="bicubic", align_corners=False)
    grid = grid.reshape(grid.shape[1], -1).transpose(0, 1)
    return torch.cat([prefix, grid], dim=0)


class ClipFeatureExtractor(nn.Module):
    """CLIP's patch embedding, class token, positional embedding and blocks 1..last_layer."""

    def __init__(self, visual: VisionTransformer, last_layer: int) -> None:
        super().__init__()
        if last_layer > len(visual.transformer.resblocks):
            raise ValueError(f"CLIP has {len(visual.transformer.resblocks)} blocks, asked for {last_layer}")
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.ln_pre = visual.ln_pre
        self.resblocks = nn.ModuleList(visual.transformer.resblocks[:last_layer])
        self.pretrained_grid: tuple[int, int] = tuple(visual.grid_size)  # type: ignore[assignment]
        self.width = int(visual.class_embedding.shape[0])
        self.grid_positions = DerivedTensor()  # the positional embedding at the last grid seen

    def forward(self, image: torch.Tensor) -> ClipFeatures:
        """image: [B, 3, H, W] normalised, already scaled by clip_resolution."""
        x, (h, w) = patch_tokens(self.conv1, image)  # [B, h*w, width]
        batch, _, width = x.shape
        cls = self.class_embedding.to(x.dtype).expand(batch, 1, width)
        x = torch.cat([cls, x], dim=1)
        pos = self.grid_positions.get(
            [self.positional_embedding],
            ((h, w), x.dtype),
            lambda: resize_grid_pos_embed(self.positional_embedding.to(x.dtype), self.pretrained_grid, (h, w), 1),
        )
        x = self.ln_pre(x + pos)

        maps, cls_tokens = [], []

        def save(tokens: torch.Tensor) -> None:
            maps.append(tokens[:, 1:].transpose(1, 2).reshape(batch, width, h, w))
            cls_tokens.append(tokens[:, 0])

        save(x)
        for block in self.resblocks:
            x = block_forward(block, x)  # SDPA: fused attention kernels, and countable by FlopCounterMode
            save(x)
        return ClipFeatures(maps=maps, cls_tokens=cls_tokens)
