"""The port computes what the published SAN code computes (shared/parity, within 1e-4)."""

from __future__ import annotations

import torch

from jobs.verify import main
from san_core.build import load_model
from san_core.verify import PARITY_TOLERANCE, check_manifest, run_parity


def test_every_reference_tensor_within_tolerance(parity_dir, tiny_expected):
    results = run_parity(parity_dir / "tiny_a")
    names = {r.name for r in results}
    # every expected tensor was compared: classifier, 3 feature maps + 3 class tokens, masks,
    # bias, region embeddings and one sem_seg per image
    n_clip = len(tiny_expected["clip_features"])
    assert len(results) == 1 + n_clip + 3 + len(tiny_expected["sem_seg"])
    assert {"classifier", "mask_preds", "attn_bias", "mask_embs"} <= names
    worst = max(results, key=lambda r: r.max_abs_diff)
    assert worst.max_abs_diff <= PARITY_TOLERANCE, worst


def test_public_api_reproduces_reference_scores(parity_dir, tiny_inputs, tiny_expected):
    """load_model + classifier + predict, as a user calls them."""
    tiny = parity_dir / "tiny_a"
    loaded = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json"))
    model = loaded.model
    classifier = model.classifier(tiny_inputs["vocabulary"])
    assert torch.allclose(classifier, tiny_expected["classifier"], atol=PARITY_TOLERANCE, rtol=0)
    class_embeddings = model.class_embeddings(tiny_inputs["vocabulary"])
    # The first image's padded size is the batch's padded size in the reference run, so running
    # it alone reproduces the reference numbers exactly.
    image = tiny_inputs["images"][0]
    size = (tiny_inputs["heights"][0], tiny_inputs["widths"][0])
    (scores,) = model.predict([image], class_embeddings, [size])
    assert scores.shape == tiny_expected["sem_seg"][0].shape
    assert (scores - tiny_expected["sem_seg"][0]).abs().max().item() <= PARITY_TOLERANCE


def test_verify_cli_parity_exit_code(parity_dir, capsys):
    assert main(["parity", str(parity_dir / "tiny_a")]) == 0
    out = capsys.readouterr().out
    assert "12/12 tensors within 0.0001" in out
    assert "mask_embs" in out


def test_manifests_of_both_published_checkpoints_map_completely(parity_dir, capsys):
    b16 = check_manifest(parity_dir / "manifests" / "san_vit_b_16.json")
    assert (b16.preset, b16.listed, b16.landed, b16.error) == ("san-vit-b16", 442, 440, None)
    assert b16.ignored == ["criterion.empty_weight", "ov_classifier.attn_mask"]
    l14 = check_manifest(parity_dir / "manifests" / "san_vit_large_14.json")
    assert (l14.preset, l14.listed, l14.landed, l14.error) == ("san-vit-l14-336", 586, 584, None)
    assert main(["manifest", str(parity_dir / "manifests" / "san_vit_large_14.json")]) == 0
    assert "584/586 tensors landed" in capsys.readouterr().out


def test_manifest_with_a_wrong_shape_fails(parity_dir, tmp_path, capsys):
    import json

    manifest = json.loads((parity_dir / "manifests" / "san_vit_b_16.json").read_text())
    manifest["side_adapter_network.query_embed"]["shape"] = [1, 99, 240]
    manifest["side_adapter_network.extra_tensor"] = {"shape": [3], "dtype": "float32"}
    del manifest["clip_rec_head.proj"]
    bad = tmp_path / "san_vit_b_16.json"
    bad.write_text(json.dumps(manifest))
    report = check_manifest(bad)
    assert not report.ok
    assert "side_adapter.query_embed" in report.error
    assert "side_adapter.extra_tensor" in report.error
    assert "recognition_head.proj" in report.error
    assert main(["manifest", str(bad)]) == 1
