"""The side adapter's MLP decoder: mask logits and per-head attention biases from query tokens."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .matrix_convs import PointwiseConv2d


class MLP(nn.Module):
    """num_layers affine maps with ReLU between them; `conv=True` makes them 1x1 convolutions."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, conv: bool = False) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        affine = PointwiseConv2d if conv else nn.Linear
        self.layers = nn.ModuleList(affine(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the last affine map: every layer but the last, each with its ReLU."""
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[-1](self.hidden(x))


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
        batch, _, h, w = pix.shape
        mask_logits = torch.einsum("bqc,bchw->bqhw", query, pix)
        bias = self.attention_bias(query, pixels).reshape(batch, self.attn_layers, self.attn_heads, -1, h, w)
        return mask_logits, list(bias.unbind(1))

    def attention_bias(self, query: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """query: [B, Q, C_embed] (after query_mlp), pixels: [B, C, h, w] -> [B, layers * heads, Q, h, w],
        rescaled by `bias_scaling`.

        The reference projects the pixels to one C_embed map per (layer, head) with the last 1x1
        convolution (weight W, bias b) and takes each query's dot product with it. The same
        numbers come from moving W to the query side, query @ W (small) dotted with the hidden
        map, plus query . b: a third of the arithmetic, and no [B, layers * heads * C_embed, h, w]
        map in memory.
        """
        hidden = self.attn_mlp.hidden(pixels)  # [B, D, h, w]
        last = self.attn_mlp.layers[-1]
        maps = self.attn_layers * self.attn_heads
        weight = last.weight.reshape(maps, -1, last.weight.shape[1])  # [maps, C_embed, D]
        query_weight = torch.einsum("bqc,mcd->bmqd", query, weight)
        query_bias = torch.einsum("bqc,mc->bmq", query, last.bias.reshape(maps, -1))
        if isinstance(self.bias_scaling, nn.Linear):
            # the learned rescale s * bias + t, folded into the small factors: s * (w . h + b) + t
            # is (s * w) . h + (s * b + t), and no pass over the [B, maps, Q, h, w] result
            scale, shift = self.bias_scaling.weight[0, 0], self.bias_scaling.bias[0]
            query_weight = query_weight * scale
            query_bias = query_bias * scale + shift
        return torch.einsum("bmqd,bdhw->bmqhw", query_weight, hidden).add_(query_bias[..., None, None])
