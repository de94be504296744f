"""The open-vocabulary classifier: CLIP's text tower turns class names into classifier weights.

Each prompt's embedding is the template-average of normalised text embeddings (normalised again,
the reference recipe); a class with several prompts (synonyms) averages its prompts the same way.
Region embeddings are scored against the class embeddings and the learnable background
embedding, all normalised and scaled by CLIP's `logit_scale.exp()`.
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
        self.context_length = int(clip.context_length)
        # Rebuilt from the context length, so it is never read from a checkpoint.
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

    def text_tower_parameters(self) -> dict[str, torch.Tensor]:
        """The tensors that determine text embeddings (what a vocabulary cache is keyed on)."""
        return {
            name: tensor
            for name, tensor in self.state_dict().items()
            if not name.startswith(("bg_embed", "logit_scale"))
        }

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return open_clip.tokenize(list(texts), context_length=self.context_length)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [N, context_length] -> L2-normalised text embeddings [N, embed_dim].

        The causal mask means the end-of-text token never sees what follows it, so the batch is
        cut after its longest prompt: same result, a fraction of the work for short prompts.
        """
        eot = tokens.argmax(dim=-1)  # the end-of-text token has the highest id
        length = int(eot.max()) + 1
        x = self.token_embedding(tokens[:, :length]) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
        return F.normalize(x, dim=-1)

    @torch.no_grad()
    def embed_prompt_sets(
        self, prompt_sets: Sequence[Sequence[str]], templates: Sequence[str], batch_size: int = 512
    ) -> torch.Tensor:
        """One normalised embedding per class [C, D] from its prompts (synonyms).

        Per prompt: the mean of normalised embeddings over templates, normalised. Per class: the
        mean over its prompts, normalised. Texts are encoded `batch_size` at a time, so memory is
        bounded by the output, whatever the vocabulary size.
        """
        prompts = [p for prompt_set in prompt_sets for p in prompt_set]
        device = self.text_projection.device
        per_prompt = torch.empty(len(prompts), self.embed_dim, device=device)
        step = max(1, batch_size // len(templates))
        for start in range(0, len(prompts), step):
            chunk = prompts[start : start + step]
            texts = [template.format(p) for template in templates for p in chunk]
            embedded = self.encode_text(self.tokenize(texts).to(device)).view(len(templates), len(chunk), -1)
            per_prompt[start : start + len(chunk)] = F.normalize(embedded.mean(dim=0), dim=-1)
        if all(len(s) == 1 for s in prompt_sets):
            return per_prompt
        owner = torch.tensor([i for i, s in enumerate(prompt_sets) for _ in s], device=device)
        summed = torch.zeros(len(prompt_sets), self.embed_dim, device=device).index_add_(0, owner, per_prompt)
        return F.normalize(summed, dim=-1)

    def class_logits(self, regions: torch.Tensor, class_embeddings: torch.Tensor, background: bool) -> torch.Tensor:
        """regions [B, Q, D] (normalised) x class_embeddings [C, D] (normalised) -> logits [B, Q, C(+1)].

        With `background`, the learned background embedding scores a last extra column.
        """
        scale = self.logit_scale.exp()
        logits = torch.einsum("bqd,cd->bqc", regions, class_embeddings.to(regions))
        if background:
            bg = F.normalize(self.bg_embed.to(regions), dim=-1)
            logits = torch.cat([logits, torch.einsum("bqd,cd->bqc", regions, bg)], dim=-1)
        return scale * logits

    def classifier_weights(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        """class_embeddings [C, D] -> the reference's logit-scaled classifier [C+1, D] (background last)."""
        rows = torch.cat([class_embeddings, self.bg_embed.to(class_embeddings)])
        return self.logit_scale.exp() * F.normalize(rows, dim=-1)
