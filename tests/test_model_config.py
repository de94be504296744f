"""The model config format (schemas/model_config.py) and building CLIP from it offline."""

from __future__ import annotations

import json
import socket

import pytest
from pydantic import ValidationError

from san_core.build import build_model
from san_core.presets import PRESETS
from schemas.model_config import SanModelConfig


def _tiny_dict(parity_dir) -> dict:
    return json.loads((parity_dir / "tiny_a" / "config.json").read_text())


def test_tiny_fixture_config_parses(tiny_config):
    assert tiny_config.side_adapter.fusion_sources() == {0: 0, 1: 1, 2: 2}
    assert tiny_config.san.clip_feature_last_layer == 2


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["san"].update(clip_resolution_typo=0.5), "clip_resolution_typo"),
        (lambda c: c.update(extra_section={}), "extra_section"),
        (lambda c: c["side_adapter"].update(fusion_map=["0=>0"]), "clip_block->side_block"),
        (lambda c: c["side_adapter"].update(fusion_map=["0->9"]), "deeper than depth"),
        (lambda c: c["side_adapter"].update(fusion_map=["5->1"]), "deeper than clip_feature_last_layer"),
        (lambda c: c["side_adapter"].update(deep_supervision_idxs=[0]), "outside 1..4"),
        (lambda c: c.update(templates=["a photo of a cat"]), "placeholder"),
        (lambda c: c["san"].update(rec_downsample_method="median"), "rec_downsample_method"),
    ],
)
def test_invalid_configs_are_rejected_with_the_field(parity_dir, edit, message):
    config = _tiny_dict(parity_dir)
    edit(config)
    with pytest.raises(ValidationError, match=message):
        SanModelConfig.model_validate(config)


def test_config_json_round_trip(parity_dir):
    for preset in PRESETS.values():
        assert SanModelConfig.model_validate_json(preset.config.to_json()) == preset.config


def test_clip_by_open_clip_name_equals_the_preset_dict():
    preset = PRESETS["san-vit-b16"].config
    by_name = preset.model_copy(update={"clip": "ViT-B-16-quickgelu"})
    a = {k: tuple(v.shape) for k, v in build_model(preset, "meta").state_dict().items()}
    b = {k: tuple(v.shape) for k, v in build_model(by_name, "meta").state_dict().items()}
    assert a == b
    with pytest.raises(ValueError, match="no model config named"):
        build_model(preset.model_copy(update={"clip": "ViT-Nonexistent"}), "meta")


def test_building_never_touches_the_network(tiny_config, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while building the model")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = build_model(tiny_config)
    assert model.classifier(["cat"]).shape == (2, 32)
    assert model.class_embeddings(["cat", ["dog", "puppy"]]).shape == (2, 32)
