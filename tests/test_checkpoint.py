"""Checkpoint reading: published layout, project format, fsspec URIs, and every error."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from san_core.build import build_model, infer_preset, load_model
from san_core.checkpoint import CheckpointError, LoadedCheckpoint, read_checkpoint, save_checkpoint
from san_core.hub import WeightsUnavailableError, fetch_published_checkpoint
from san_core.presets import PRESETS


@pytest.fixture(scope="module")
def reference_state(parity_dir) -> dict[str, torch.Tensor]:
    return dict(torch.load(parity_dir / "tiny_a" / "checkpoint.pth", weights_only=True))


@pytest.fixture(scope="module")
def tiny_image_and_vocab(tiny_inputs):
    return tiny_inputs["images"][0], tiny_inputs["vocabulary"]


def _scores(loaded, image, vocab) -> torch.Tensor:
    (scores,) = loaded.model.predict([image], loaded.model.class_embeddings(vocab))
    return scores


def _save_pth(path: Path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def test_bare_wrapped_and_safetensors_reference_checkpoints_agree(
    tmp_path, parity_dir, reference_state, tiny_image_and_vocab
):
    config = str(parity_dir / "tiny_a" / "config.json")
    bare = _save_pth(tmp_path / "bare.pth", reference_state)
    wrapped = _save_pth(tmp_path / "wrapped.pth", {"model": reference_state, "iteration": 59999})
    st_path = tmp_path / "reference.safetensors"
    save_file({k: v.contiguous() for k, v in reference_state.items()}, st_path)
    results = [
        _scores(load_model(checkpoint=uri, model_config=config), *tiny_image_and_vocab)
        for uri in (bare, wrapped, str(st_path))
    ]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def _load_with(tmp_path, parity_dir, state) -> None:
    uri = _save_pth(tmp_path / "edited.pth", state)
    load_model(checkpoint=uri, model_config=str(parity_dir / "tiny_a" / "config.json"))


def test_missing_unexpected_and_misshaped_are_listed_together(tmp_path, parity_dir, reference_state):
    state = dict(reference_state)
    del state["side_adapter_network.query_embed"]
    del state["clip_rec_head.ln_post.weight"]
    state["side_adapter_network.extra.weight"] = torch.zeros(2)
    state["ov_classifier.bg_embed"] = torch.zeros(1, 31)
    with pytest.raises(CheckpointError) as info:
        _load_with(tmp_path, parity_dir, state)
    message = str(info.value)
    assert (
        "2 missing" in message
        and "side_adapter.query_embed" in message
        and "recognition_head.ln_post.weight" in message
    )
    assert "1 unexpected" in message and "side_adapter.extra.weight" in message
    assert "1 wrong shape" in message and "text_classifier.bg_embed: checkpoint (1, 31) vs model (1, 32)" in message


def test_only_named_training_tensors_are_dropped(tmp_path, parity_dir, reference_state):
    """criterion.empty_weight is dropped by name; any other criterion tensor is still an error."""
    state = dict(reference_state)
    assert "criterion.empty_weight" in state
    _load_with(tmp_path, parity_dir, state)  # loads fine with it
    state["criterion.other_weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="criterion.other_weight"):
        _load_with(tmp_path, parity_dir, state)


class CodeNeeded:  # an object whose unpickling would need this module's code
    def __init__(self) -> None:
        self.payload = 1


def test_pickle_that_needs_code_is_refused(tmp_path, parity_dir, reference_state):
    uri = _save_pth(tmp_path / "evil.pth", {"model": reference_state, "extra": CodeNeeded()})
    with pytest.raises(CheckpointError, match="contains code") as info:
        read_checkpoint(uri)
    assert "CodeNeeded" in str(info.value) and "refusing" in str(info.value)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="neither a PyTorch checkpoint"):
        read_checkpoint(str(garbage))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(str(tmp_path / "nope.pth"))
    not_a_state_dict = _save_pth(tmp_path / "list.pth", [torch.zeros(1)])
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        read_checkpoint(not_a_state_dict)
    ordered = _save_pth(tmp_path / "ordered.pth", collections.OrderedDict(a="text"))
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        read_checkpoint(ordered)


def test_project_format_round_trip_carries_its_config(tmp_path, parity_dir, tiny_image_and_vocab):
    tiny = parity_dir / "tiny_a"
    original = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json"))
    out = tmp_path / "model.safetensors"
    digest = save_checkpoint(original.model, original.config, str(out))
    reread = load_model(checkpoint=str(out))  # no config given: it comes from the file
    assert reread.config == original.config
    assert reread.checkpoint_digest == digest
    assert read_checkpoint(str(out)).source_layout == "project"
    assert torch.equal(_scores(original, *tiny_image_and_vocab), _scores(reread, *tiny_image_and_vocab))
    header_len = int.from_bytes(out.read_bytes()[:8], "little")
    metadata = json.loads(out.read_bytes()[8 : 8 + header_len])["__metadata__"]
    assert metadata["format"] == "san-labeler/1"


def test_checkpoint_and_config_from_s3(s3_bucket, parity_dir, tiny_image_and_vocab):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    tiny = parity_dir / "tiny_a"
    fs.put(str(tiny / "checkpoint.pth"), f"{s3_bucket}/weights/checkpoint.pth")
    fs.put(str(tiny / "config.json"), f"{s3_bucket}/weights/config.json")
    from_s3 = load_model(
        checkpoint=f"{s3_bucket}/weights/checkpoint.pth", model_config=f"{s3_bucket}/weights/config.json"
    )
    local = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json"))
    assert from_s3.checkpoint_digest == local.checkpoint_digest
    assert torch.equal(_scores(from_s3, *tiny_image_and_vocab), _scores(local, *tiny_image_and_vocab))
    # and the project format written to S3 reads back
    save_checkpoint(local.model, local.config, f"{s3_bucket}/export/model.safetensors")
    assert load_model(checkpoint=f"{s3_bucket}/export/model.safetensors").config == local.config
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(f"{s3_bucket}/weights/missing.pth")


def test_checkpoint_without_config_needs_one_unless_it_matches_a_preset(
    tmp_path, parity_dir, reference_state, parity_manifest_b16
):
    uri = _save_pth(tmp_path / "tiny.pth", reference_state)
    with pytest.raises(CheckpointError, match="--model-config"):
        load_model(checkpoint=uri)
    # a checkpoint with the published B/16 tensors is recognised as that preset by its shapes
    assert infer_preset(parity_manifest_b16) == "san-vit-b16"


@pytest.fixture()
def parity_manifest_b16(parity_dir) -> LoadedCheckpoint:
    from san_core.checkpoint import from_reference_layout

    manifest = json.loads((parity_dir / "manifests" / "san_vit_b_16.json").read_text())
    tensors = {k: torch.empty(v["shape"], device="meta") for k, v in manifest.items()}
    return LoadedCheckpoint(from_reference_layout(tensors), None, "", "reference")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_offline_preset_names_the_file_and_the_flag(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        fetch_published_checkpoint(name, cache_dir=str(tmp_path))
    message = str(info.value)
    assert PRESETS[name].filename in message
    assert "--checkpoint" in message and f"--model {name}" in message


def test_offline_without_the_env_flag_fails_fast(tmp_path, monkeypatch):
    """On a machine with no network the probe fails at once instead of retrying for ~25 s."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    import san_core.hub as hub

    monkeypatch.setattr(hub, "HUB_ENDPOINT", "https://hub.invalid")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="san_vit_b_16.pth"):
        fetch_published_checkpoint("san-vit-b16", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10


def test_cached_published_file_is_used_without_network(tmp_path, monkeypatch):
    """A file already in the hub cache (downloaded once, or pre-staged) is found offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo_dir = tmp_path / "models--Mendel192--san"
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    (snapshot / "san_vit_b_16.pth").write_bytes(b"staged")
    assert constants.HF_HUB_CACHE  # the default cache exists as a setting; we use our own here
    path = fetch_published_checkpoint("san-vit-b16", cache_dir=str(tmp_path))
    assert Path(path).read_bytes() == b"staged"


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'san-vit-h14'"):
        load_model(model="san-vit-h14")


def test_build_model_random_weights_are_finite():
    model = build_model(PRESETS["san-vit-b16"].config, "meta")
    assert sum(p.numel() for p in model.side_adapter.parameters()) > 8_000_000
