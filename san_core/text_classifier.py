"""The open-vocabulary classifier: CLIP's text tower turns class names into classifier weights.

Each class embedding is the template-average of normalised text embeddings (normalised again);
the learnable background embedding is appended, every row is normalised and the whole table is
scaled by CLIP's `logit_scale.exp()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
from open_clip.model import CLIP
from torch import nn
from torch.nn import functional as F


class TextClassifier(nn.Module):
    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        # Rebuilt from the context length, so it is never read from a checkpoint.
        self.context_length = int(clip.context_length)
        self.register_buffer("attn_mask", torch.empty(self.context_length, self.context_length), persistent=False)
        self.reset_attn_mask()
        embed_dim = int(clip.text_projection.shape[1])
        self.bg_embed = nn.Parameter(torch.randn(1, embed_dim) * embed_dim**-0.5)

    def reset_attn_mask(self) -> None:
        """Causal mask of CLIP's text transformer: position i sees positions <= i."""
        if self.attn_mask.device.type == "meta":
            return
        n = self.context_length
        self.attn_mask = torch.full((n, n), float("-inf"), device=self.attn_mask.device).triu_(1)

    @property
    def embed_dim(self) -> int:
        return int(self.bg_embed.shape[1])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return open_clip.tokenize(list(texts), context_length=self.context_length)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [N, context_length] -> L2-normalised text embeddings [N, embed_dim]."""
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection
        return F.normalize(x, dim=-1)

    def embed_names(self, names: Sequence[str], templates: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
        """Template-averaged, normalised embeddings [len(names), embed_dim] (the reference recipe)."""
        device = self.text_projection.device
        per_template = []
        for template in templates:
            prompts = [template.format(name) for name in names]
            chunks = [
                self.encode_text(self.tokenize(prompts[i : i + batch_size]).to(device))
                for i in range(0, len(prompts), batch_size)
            ]
            per_template.append(torch.cat(chunks))
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)

    def classifier_weights(self, class_embeddings: torch.Tensor, background: bool = True) -> torch.Tensor:
        """class_embeddings [C, D] -> logit-scaled classifier [C+1, D] (background last) or [C, D]."""
        rows = torch.cat([class_embeddings, self.bg_embed.to(class_embeddings)]) if background else class_embeddings
        return self.logit_scale.exp() * F.normalize(rows, dim=-1)
