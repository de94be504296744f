"""The quick-start demo, in both of its modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "demo.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_demo_with_given_weights_labels_sample_photographs(tmp_path, parity_dir):
    tiny = parity_dir / "tiny_a"
    out = tmp_path / "demo"
    result = _run(
        [
            "--checkpoint",
            str(tiny / "checkpoint.pth"),
            "--model-config",
            str(tiny / "config.json"),
            "--output",
            str(out),
            "--vocab",
            "cat,person,cup",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "SMOKE TEST" not in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == "published" and manifest["labels_meaningful"] is True
    assert len(manifest["images"]) == 4 and len(manifest["checkpoint_digest"]) == 64
    for entry in manifest["images"]:
        label_map = np.asarray(Image.open(entry["label_map"]))
        assert min(label_map.shape) == 640  # the reference test size: short side 640
        assert set(np.unique(label_map).tolist()) <= {1, 2, 3}  # class ids, 0 reserved for unlabeled
        assert abs(sum(entry["labels"].values()) - 1.0) < 1e-6  # shares of the three classes cover the image


def test_demo_without_weights_says_smoke_test_on_screen_and_in_manifest(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(images / "grey.jpg")
    out = tmp_path / "demo"
    result = _run(
        ["--input", str(images), "--output", str(out), "--short-side", "64"],
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")},
    )
    assert result.returncode == 0, result.stderr
    assert "SMOKE TEST" in result.stdout and "MEANINGLESS" in result.stdout
    assert "san_vit_b_16.pth" in result.stderr and "--checkpoint" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights"] == "random (smoke test)" and manifest["labels_meaningful"] is False
    assert manifest["images"][0]["image"].endswith("grey.jpg")
