"""The SAN model configuration: the format of `shared/parity/tiny_a/config.json`.

Four sections, mirroring the published SAN hyper-parameters:

* ``clip``: an open_clip model config, either a name known to open_clip (``"ViT-B-16"``) or the
  config dict itself (``embed_dim``, ``vision_cfg``, ``text_cfg``, optionally ``quick_gelu``).
* ``templates``: the prompt templates averaged into each class embedding.
* ``san``: image-side settings (which CLIP blocks feed the side adapter, input scaling, ...).
* ``side_adapter``: the side network's shape.
* ``video`` (optional): how the journal version's video inference clusters a clip's proposals.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    # Unknown keys are typos; they must not pass silently.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SanSection(_Strict):
    """Image-side settings of SAN (the reference's ``MODEL.SAN.*``)."""

    clip_feature_last_layer: int = Field(
        ge=1, description="CLIP blocks run on the image; the rest form the recognition head"
    )
    clip_resolution: float = Field(gt=0, le=1, description="CLIP sees the padded image scaled by this factor")
    size_divisibility: int = Field(default=32, ge=1)
    rec_downsample_method: Literal["max", "avg", "bilinear", "bicubic", "nearest"] = "max"
    sos_token_format: Literal["cls_token"] = "cls_token"
    pixel_mean: tuple[float, float, float] = (122.7709383, 116.7460125, 104.09373615)
    pixel_std: tuple[float, float, float] = (68.5005327, 66.6321579, 70.32316305)


class SideAdapterSection(_Strict):
    """The side network: a small ViT with queries, fusion layers and an MLP mask decoder."""

    embed_dim: int = Field(ge=1)
    depth: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    patch_size: int = Field(ge=1)
    image_size: int = Field(ge=1, description="size the positional embedding was trained at")
    mlp_ratio: float = 4.0
    num_queries: int = Field(ge=1)
    fusion_map: list[str] = Field(description='"clip_block->side_block" pairs, e.g. "3->1"')
    deep_supervision_idxs: list[int]
    attn_bias_heads: int = Field(ge=1)
    attn_bias_layers: int = Field(default=1, ge=1)
    embed_channels: int = Field(ge=1)
    mlp_channels: int = Field(ge=1)
    mlp_num_layers: int = Field(ge=1)
    rescale_attn_bias: bool = True

    @field_validator("fusion_map")
    @classmethod
    def _check_fusion_map(cls, value: list[str]) -> list[str]:
        for item in value:
            parts = item.split("->")
            if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
                raise ValueError(f'fusion_map entry {item!r} is not of the form "clip_block->side_block"')
        return value

    @model_validator(mode="after")
    def _check_indices(self) -> SideAdapterSection:
        for side_idx in self.fusion_targets():
            if side_idx > self.depth:
                raise ValueError(f"fusion target block {side_idx} is deeper than depth {self.depth}")
        if not self.deep_supervision_idxs:
            raise ValueError("deep_supervision_idxs must name at least the output block")
        for idx in self.deep_supervision_idxs:
            if not 1 <= idx <= self.depth:
                raise ValueError(f"deep supervision block {idx} outside 1..{self.depth}")
        if self.embed_dim % self.num_heads:
            raise ValueError("embed_dim must be divisible by num_heads")
        return self

    def fusion_sources(self) -> dict[int, int]:
        """Side block index -> CLIP feature index it receives ("3->1" gives {1: 3})."""
        pairs = (item.split("->") for item in self.fusion_map)
        return {int(side): int(clip) for clip, side in pairs}

    def fusion_targets(self) -> list[int]:
        return sorted(self.fusion_sources())


class KMeansSection(_Strict):
    """scikit-learn KMeans settings, as the published video code fixes them."""

    random_state: int = 0
    n_init: int = Field(default=1, ge=1)


class VideoSection(_Strict):
    """The journal version's video inference: a clip's query tokens clustered into shared proposals."""

    num_clusters: int | None = Field(default=None, ge=1, description="proposals per clip; default: num_queries")
    kmeans: KMeansSection = KMeansSection()


class SanModelConfig(_Strict):
    """A whole SAN model: CLIP, prompt templates, image-side settings and the side adapter."""

    clip: str | dict[str, Any]
    templates: list[str] = Field(min_length=1)
    san: SanSection
    side_adapter: SideAdapterSection
    video: VideoSection | None = None  # None: the defaults (num_clusters = num_queries)

    @property
    def video_settings(self) -> VideoSection:
        return self.video or VideoSection()

    @property
    def num_clusters(self) -> int:
        return self.video_settings.num_clusters or self.side_adapter.num_queries

    def digest(self) -> str:
        """sha256 of the config JSON; an absent `video` section is left out, so configs written
        before it existed keep their digest (and their outputs' provenance)."""
        exclude = {"video"} if self.video is None else None
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, value: list[str]) -> list[str]:
        for template in value:
            if "{}" not in template:
                raise ValueError(f"template {template!r} has no '{{}}' placeholder for the class name")
        return value

    @model_validator(mode="after")
    def _check_fusion_sources(self) -> SanModelConfig:
        for clip_idx in self.side_adapter.fusion_sources().values():
            if clip_idx > self.san.clip_feature_last_layer:
                raise ValueError(
                    f"fusion source CLIP feature {clip_idx} is deeper than "
                    f"clip_feature_last_layer {self.san.clip_feature_last_layer}"
                )
        return self

    @classmethod
    def from_json_file(cls, path: str | Path) -> SanModelConfig:
        return cls.model_validate(json.loads(Path(path).read_text()))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)
