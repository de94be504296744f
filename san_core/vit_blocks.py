"""Plain pre-norm ViT blocks, as timm's VisionTransformer builds them (qkv bias, GELU, LN eps 1e-6)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .matrix_convs import patch_tokens
from .residual import add_linear

LAYER_NORM_EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C] -> the attention's merged heads [B, N, C], before the output projection."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        x = F.scaled_dot_product_attention(q, k, v)
        return x.transpose(1, 2).reshape(batch, tokens, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C] -> [B, N, C]."""
        return self.proj(self.heads(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + attn(norm1(x)), then that + mlp(norm2(that)), each residual added as its branch's
        last product's initial value (`add_linear`)."""
        x = add_linear(x, self.attn.proj, self.attn.heads(self.norm1(x)))
        return add_linear(x, self.mlp.fc2, self.mlp.hidden(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens [B, h*w, C] and the grid (h, w), by `patch_tokens`."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        return patch_tokens(self.proj, image)
