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

# The reference blocks attention with a large negative bias rather than -inf; keeping the same
# constant keeps the softmax numerically identical.
BLOCKED = -100.0


def downsample_bias(bias: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    """bias: [N, C, H, W] -> [N, C, size[0], size[1]]."""
    if method == "max":
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
        """Full additive masks, one per block: [B*heads, Q+1+L, Q+1+L].

        attn_biases: per bias layer [B, bias_heads, Q, H', W'] (bias_heads is 1 or CLIP's heads).
        Token order is [SOS_1..SOS_Q, CLS, patches].
        """
        masks = []
        for bias in attn_biases:
            batch, bias_heads, queries = bias.shape[:3]
            if bias_heads not in (1, self.num_heads):
                raise ValueError(f"attention bias has {bias_heads} heads, CLIP has {self.num_heads}")
            bias = downsample_bias(bias.flatten(1, 2), grid, self.downsample_method)
            bias = bias.reshape(batch, bias_heads, queries, grid[0] * grid[1])
            bias = bias.expand(batch, self.num_heads, queries, bias.shape[-1])
            length = bias.shape[-1]
            total = queries + 1 + length
            base = bias.new_zeros(total, total)
            base[:, :queries] = BLOCKED  # nobody attends to SOS tokens ...
            base[torch.arange(queries), torch.arange(queries)] = 0.0  # ... but each SOS to itself
            base[:queries, queries] = BLOCKED  # SOS tokens do not see the class token
            mask = base.expand(batch, self.num_heads, total, total).clone()
            mask[:, :, :queries, queries + 1 :] = bias
            masks.append(mask.reshape(batch * self.num_heads, total, total))
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
        """
        batch, width, h, w = patch_map.shape
        queries = attn_biases[0].shape[2]
        masks = self.attention_masks(attn_biases, (h, w))
        image_tokens = torch.cat([cls_token[:, None], patch_map.flatten(2).transpose(1, 2)], dim=1)
        sos_tokens = cls_token[:, None].expand(batch, queries, width)
        x = torch.cat([sos_tokens, image_tokens], dim=1)
        for block, mask in zip(self.resblocks, masks, strict=True):
            x = block(x, attn_mask=mask)
        sos = self.ln_post(x[:, :queries])
        return F.normalize(sos @ self.proj, dim=-1)
