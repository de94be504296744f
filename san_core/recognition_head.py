"""The recognition head: CLIP's remaining blocks name each mask proposal.

One [SOS] token per query (a copy of the class token) runs through CLIP's deeper blocks next to
the image tokens. Each SOS token may attend to itself and to the patch tokens, weighted by the
side adapter's attention bias; it may not attend to other SOS tokens or to the class token.
The image tokens never attend to SOS tokens, so they evolve exactly as in plain CLIP.
"""

from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

from .clip_blocks import finish_block, merge_heads, qkv_heads

# The reference blocks attention with a large negative bias rather than -inf; keeping the same
# constant keeps the softmax numerically identical.
BLOCKED = -100.0


def window_max(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H / rows, W / cols]: the maximum of each non-overlapping window,
    as `F.max_pool2d(x, (rows, cols))` computes it. A running `torch.maximum` over the windows'
    strided slices is exact, and here about eight times faster than the pooling kernel, which
    also computes the indices it then drops ([1, 1200, 40, 40]: 0.5 against 4.3 ms)."""
    x = x.unflatten(-2, (-1, rows))  # [N, C, H / rows, rows, W]
    out = x[..., 0, :]
    for row in range(1, rows):
        out = torch.maximum(out, x[..., row, :])
    x = out.unflatten(-1, (-1, cols))  # [N, C, H / rows, W / cols, cols]
    out = x[..., 0]
    for col in range(1, cols):
        out = torch.maximum(out, x[..., col])
    return out


def downsample_bias(bias: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """bias: [N, C, H, W] -> [N, C, size[0], size[1]]."""
    if method == "max":
        height, width = bias.shape[-2:]
        if height % size[0] == 0 and width % size[1] == 0:  # the same windows, a faster way
            return window_max(bias, height // size[0], width // size[1])
        return F.adaptive_max_pool2d(bias, size)
    if method == "avg":
        return F.adaptive_avg_pool2d(bias, size)
    return F.interpolate(bias, size=size, mode=method, align_corners=None if method == "nearest" else False)


class RecognitionHead(nn.Module):
    """CLIP blocks last_layer+1..end, ln_post and proj, run with attention-biased SOS tokens."""

    def __init__(self, visual: VisionTransformer, first_layer: int, downsample_method: str) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(visual.transformer.resblocks[first_layer:])
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.num_heads = int(self.resblocks[0].attn.num_heads) if len(self.resblocks) else 0
        self.downsample_method = downsample_method

    def attention_masks(self, attn_biases: list[torch.Tensor], grid: tuple[int, int]) -> list[torch.Tensor]:
        """The SOS tokens' additive attention masks, one per block: [B, heads, Q, Q+1+L].

        attn_biases: per bias layer [B, bias_heads, Q, H', W'] (bias_heads is 1 or CLIP's heads).
        Key order is [SOS_1..SOS_Q, CLS, patches]: each SOS token sees itself (0) and the patches
        (their bias), never another SOS token or the class token (BLOCKED).
        """
        masks = []
        for bias in attn_biases:
            batch, bias_heads, queries = bias.shape[:3]
            if bias_heads not in (1, self.num_heads):
                raise ValueError(f"attention bias has {bias_heads} heads, CLIP has {self.num_heads}")
            bias = downsample_bias(bias.flatten(1, 2), grid, self.downsample_method)
            bias = bias.reshape(batch, bias_heads, queries, grid[0] * grid[1])
            own = torch.full((queries, queries + 1), BLOCKED, dtype=bias.dtype, device=bias.device)
            own.diagonal().zero_()
            own = own.expand(batch, self.num_heads, queries, queries + 1)
            masks.append(torch.cat([own, bias.expand(batch, self.num_heads, -1, -1)], dim=-1))
        if len(masks) == 1:
            masks = masks * len(self.resblocks)
        if len(masks) != len(self.resblocks):
            raise ValueError(f"{len(masks)} attention-bias layers for {len(self.resblocks)} CLIP blocks")
        return masks

    def forward(
        self, cls_token: torch.Tensor, patch_map: torch.Tensor, attn_biases: list[torch.Tensor]
    ) -> torch.Tensor:
        """cls_token: [B, width], patch_map: [B, width, h, w] (CLIP features after first_layer blocks).

        Returns the L2-normalised region embeddings [B, Q, embed_dim].

        The reference runs all tokens through one attention with a [Q+1+L, Q+1+L] mask in which
        the image tokens' weight on every SOS token is exp(-100) of the largest (below float
        resolution), so here the image tokens attend among themselves without a mask and only the
        SOS rows carry one; the last block computes the SOS tokens alone, the only ones read.
        """
        batch, width, h, w = patch_map.shape
        queries = attn_biases[0].shape[2]
        masks = self.attention_masks(attn_biases, (h, w))
        image_tokens = torch.cat([cls_token[:, None], patch_map.flatten(2).transpose(1, 2)], dim=1)
        sos_tokens = cls_token[:, None].expand(batch, queries, width)
        x = torch.cat([sos_tokens, image_tokens], dim=1)
        for index, (block, mask) in enumerate(zip(self.resblocks, masks, strict=True)):
            q, k, v = qkv_heads(block, block.ln_1(x))
            sos = F.scaled_dot_product_attention(q[:, :, :queries], k, v, attn_mask=mask.to(q.dtype))
            if index == len(self.resblocks) - 1:
                x = finish_block(block, x[:, :queries], merge_heads(sos))
                break
            image = F.scaled_dot_product_attention(q[:, :, queries:], k[:, :, queries:], v[:, :, queries:])
            x = finish_block(block, x, merge_heads(torch.cat([sos, image], dim=2)))
        sos = self.ln_post(x[:, :queries])
        return F.normalize(sos @ self.proj, dim=-1)
