"""The side adapter's MLP decoder: mask logits and per-head attention biases from query tokens."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """num_layers affine maps with ReLU between them; `conv=True` makes them 1x1 convolutions."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, conv: bool = False) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        affine = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if conv else nn.Linear
        self.layers = nn.ModuleList(affine(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    def __init__(
        self,
        in_dim: int,
        attn_heads: int,
        attn_layers: int,
        embed_channels: int,
        mlp_channels: int,
        mlp_num_layers: int,
        rescale_attn_bias: bool,
    ) -> None:
        super().__init__()
        self.attn_heads = attn_heads
        self.attn_layers = attn_layers
        self.query_mlp = MLP(in_dim, mlp_channels, embed_channels, mlp_num_layers)
        self.pix_mlp = MLP(in_dim, mlp_channels, embed_channels, mlp_num_layers, conv=True)
        out = embed_channels * attn_heads * attn_layers
        self.attn_mlp = MLP(in_dim, mlp_channels, out, mlp_num_layers, conv=True)
        # A learned affine rescale of every bias value (weight [1, 1], bias [1]).
        self.bias_scaling = nn.Linear(1, 1) if rescale_attn_bias else nn.Identity()

    def forward(self, query: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """query: [B, Q, C], pixels: [B, C, h, w].

        Returns mask logits [B, Q, h, w] and attn_layers biases, each [B, attn_heads, Q, h, w].
        """
        query = self.query_mlp(query)
        pix = self.pix_mlp(pixels)
        batch, channels, h, w = pix.shape
        mask_logits = torch.einsum("bqc,bchw->bqhw", query, pix)
        attn = self.attn_mlp(pixels).reshape(batch, self.attn_layers, self.attn_heads, channels, h, w)
        bias = torch.einsum("bqc,blnchw->blnqhw", query, attn)
        bias = self.bias_scaling(bias[..., None]).squeeze(-1)
        return mask_logits, list(bias.unbind(1))
