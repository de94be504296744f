"""Small synthetic segmentation datasets for the fine-tuning tests: images of flat coloured
regions with a little noise, and label maps that say exactly which region is which."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

TAXONOMY_YAML = """\
name: synthetic
version: 1
templates: ["a photo of a {}."]
background: learned
classes:
  - {id: 1, name: sky}
  - {id: 2, name: grass}
  - {id: 3, name: road}
"""
COLOURS = {1: (90, 140, 230), 2: (40, 160, 50), 3: (120, 120, 120)}


def synthetic_pair(index: int, height: int = 80, width: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8, label ids uint8): sky above a horizon, grass below, a road block somewhere, and a
    thin band of ignore (255) along the horizon."""
    rng = np.random.default_rng(index)
    labels = np.full((height, width), 2, dtype=np.uint8)
    horizon = int(rng.integers(height // 4, height // 2))
    labels[:horizon] = 1
    top, left = int(rng.integers(horizon + 2, height - 12)), int(rng.integers(0, width - 24))
    labels[top : top + 12, left : left + 24] = 3
    rgb = np.zeros((height, width, 3), dtype=np.float32)
    for class_id, colour in COLOURS.items():
        rgb[labels == class_id] = colour
    rgb += rng.normal(0, 6, rgb.shape)
    labels[horizon] = 255
    return rgb.clip(0, 255).astype(np.uint8), labels


def write_manifest_dataset(root: Path, count: int, first: int = 0) -> Path:
    """images/, labels/ and a manifest.csv (image_uri, label_uri) of `count` pairs."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(first, first + count):
        rgb, labels = synthetic_pair(i)
        image, label = root / "images" / f"{i:04d}.jpg", root / "labels" / f"{i:04d}.png"
        Image.fromarray(rgb).save(image, quality=95)
        Image.fromarray(labels).save(label)
        rows.append({"image_uri": str(image), "label_uri": str(label)})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image_uri", "label_uri"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def write_detectron2_dataset(root: Path, split: str, count: int) -> Path:
    """images/<split> and annotations_detectron2/<split> with class indices (taxonomy order);
    returns the images folder."""
    images, labels = root / "images" / split, root / "annotations_detectron2" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rgb, ids = synthetic_pair(1000 + i)
        indices = np.where(ids == 255, 255, ids - 1).astype(np.uint8)
        Image.fromarray(rgb).save(images / f"{i:04d}.jpg", quality=95)
        Image.fromarray(indices).save(labels / f"{i:04d}.png")
    return images
