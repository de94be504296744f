"""The published SAN models: their configs (hyper-parameters of the CVPR 2023 release) and files."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.model_config import SanModelConfig, SanSection, SideAdapterSection
from schemas.templates import VILD_TEMPLATES

HUB_REPO = "Mendel192/san"


def _side_adapter(fusion_map: list[str], attn_bias_heads: int) -> SideAdapterSection:
    # vit_w240n6d8_patch16 at 640, 100 queries, 3-layer 256-wide MLP decoder with bias rescale.
    return SideAdapterSection(
        embed_dim=240,
        depth=8,
        num_heads=6,
        patch_size=16,
        image_size=640,
        mlp_ratio=4.0,
        num_queries=100,
        fusion_map=fusion_map,
        deep_supervision_idxs=[7, 8],
        attn_bias_heads=attn_bias_heads,
        attn_bias_layers=1,
        embed_channels=256,
        mlp_channels=256,
        mlp_num_layers=3,
        rescale_attn_bias=True,
    )


# The OpenAI CLIP weights use QuickGELU, hence the flag (open_clip's "-quickgelu" configs).
SAN_VIT_B16 = SanModelConfig(
    clip={
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
    },
    templates=list(VILD_TEMPLATES),
    san=SanSection(clip_feature_last_layer=9, clip_resolution=0.5),
    side_adapter=_side_adapter(["0->0", "3->1", "6->2", "9->3"], attn_bias_heads=12),
)

SAN_VIT_L14_336 = SanModelConfig(
    clip={
        "embed_dim": 768,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
    },
    templates=list(VILD_TEMPLATES),
    san=SanSection(clip_feature_last_layer=18, clip_resolution=0.7),
    side_adapter=_side_adapter(["0->0", "6->1", "12->2", "18->3"], attn_bias_heads=16),
)


@dataclass(frozen=True)
class Preset:
    name: str
    config: SanModelConfig
    filename: str  # the published checkpoint's file name in HUB_REPO


PRESETS: dict[str, Preset] = {
    "san-vit-b16": Preset("san-vit-b16", SAN_VIT_B16, "san_vit_b_16.pth"),
    "san-vit-l14-336": Preset("san-vit-l14-336", SAN_VIT_L14_336, "san_vit_large_14.pth"),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(PRESETS)}") from None
