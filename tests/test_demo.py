"""The quick-start demo (jobs/demo.py runs the labeling job on a local Ray), in both modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / "demo.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


def test_demo_with_given_weights_labels_the_sample_photographs(tmp_path, parity_dir):
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
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SMOKE TEST" not in result.stdout
    for name in ("astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg"):
        assert any(line.startswith(name) and "%" in line for line in result.stdout.splitlines()), result.stdout
    manifest = json.loads((out / "labels" / "_manifest.json").read_text())
    assert manifest["weights"] == "checkpoint" and manifest["labels_meaningful"] is True
    assert manifest["counts"]["labeled"] == 4 and len(manifest["previews"]) == 4
    with Image.open(manifest["previews"][0]) as image:  # real weights: no banner
        top = np.asarray(image.convert("RGB"))[:20]
    assert ((top[..., 0] > 150) & (top[..., 1] < 60) & (top[..., 2] < 60)).mean() < 0.5


def test_demo_without_weights_says_smoke_test_on_screen_and_in_manifest(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(images / "grey.jpg")
    out = tmp_path / "demo"
    result = _run(
        # voc20: the random text encoder builds the default 171 classes in about 17 s, to no end here
        ["--input", str(images), "--output", str(out), "--short-side", "64", "--vocab", "voc20"],
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SMOKE TEST" in result.stdout and "MEANINGLESS" in result.stdout
    manifest = json.loads((out / "labels" / "_manifest.json").read_text())
    assert manifest["weights"] == "random (smoke test)" and manifest["labels_meaningful"] is False
    assert manifest["digests"]["checkpoint"] is None and manifest["counts"]["labeled"] == 1
    (preview,) = manifest["previews"]  # a smoke preview cannot pass for a real one: a red banner on top
    with Image.open(preview) as image:
        banner = np.asarray(image.convert("RGB"))[:20]
    red = (banner[..., 0] > 150) & (banner[..., 1] < 60) & (banner[..., 2] < 60)
    assert red.mean() > 0.8
