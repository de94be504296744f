"""Build the open_clip CLIP that SAN is attached to, from a config, without touching the network."""

from __future__ import annotations

import copy
from typing import Any

import open_clip
from open_clip.model import CLIP


def resolve_clip_config(clip: str | dict[str, Any]) -> dict[str, Any]:
    """An open_clip model config dict from a name known to open_clip or from the dict itself."""
    if isinstance(clip, str):
        config = open_clip.get_model_config(clip)
        if config is None:
            known = ", ".join(sorted(open_clip.list_models())[:10])
            raise ValueError(f"open_clip knows no model config named {clip!r} (for example: {known}, ...)")
        return copy.deepcopy(config)
    return copy.deepcopy(dict(clip))


def build_clip(clip: str | dict[str, Any]) -> CLIP:
    """A randomly initialised open_clip ``CLIP``; SAN's checkpoint supplies every weight."""
    config = resolve_clip_config(clip)
    unsupported = {"custom_text", "hf_model_name", "timm_model_name"} & (
        set(config) | set(config.get("text_cfg", {})) | set(config.get("vision_cfg", {}))
    )
    if unsupported or config.get("vision_cfg", {}).get("timm_model_name"):
        raise ValueError(f"SAN needs an open_clip ViT with its own text tower; config has {sorted(unsupported)}")
    model = CLIP(
        embed_dim=config["embed_dim"],
        vision_cfg=config["vision_cfg"],
        text_cfg=config["text_cfg"],
        quick_gelu=config.get("quick_gelu", False),
    )
    visual = model.visual
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError("SAN's recognition head needs a CLIP ViT that pools with its class token")
    return model
