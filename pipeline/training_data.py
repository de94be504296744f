"""Training samples for fine-tuning: (image, label map) pairs, augmented as the published recipe.

Label maps hold taxonomy class ids with 255 = ignore. Augmentation, as the reference's
COCO-Stuff training config: short side resized to a random choice of 320, 384, ..., 960 (0.5-1.5 x
640; long side at most 2560), a random 640x640 crop (padded with 128 / ignore when smaller), a
horizontal flip with probability 0.5, and SSD-style photometric jitter (brightness, contrast,
saturation, hue). Labels follow every geometric step with nearest-neighbour sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.images import short_side_size

IGNORE = 255
TRAIN_SHORT_SIDES = tuple(int(x * 0.1 * 640) for x in range(5, 16))  # 320 ... 960
IMAGE_PAD_VALUE = 128


@dataclass(frozen=True)
class AugmentConfig:
    short_sides: tuple[int, ...] = TRAIN_SHORT_SIDES
    max_long_side: int = 2560
    crop_size: int = 640
    flip_probability: float = 0.5
    photometric: bool = True


def resize_pair(
    rgb: np.ndarray, labels: np.ndarray, short_side: int, max_long_side: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = short_side_size(rgb.shape[0], rgb.shape[1], short_side, max_long_side)
    image = np.array(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    label = np.array(Image.fromarray(labels).resize((w, h), Image.NEAREST))
    return image, label


def random_crop_pair(
    rgb: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A size x size window; images smaller than that are padded (128 / ignore) at bottom-right."""
    h, w = labels.shape
    top = int(rng.integers(0, max(h - size, 0) + 1))
    left = int(rng.integers(0, max(w - size, 0) + 1))
    image = np.full((size, size, 3), IMAGE_PAD_VALUE, dtype=np.uint8)
    label = np.full((size, size), IGNORE, dtype=labels.dtype)
    crop_h, crop_w = min(size, h), min(size, w)
    image[:crop_h, :crop_w] = rgb[top : top + crop_h, left : left + crop_w]
    label[:crop_h, :crop_w] = labels[top : top + crop_h, left : left + crop_w]
    return image, label


def photometric_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD colour augmentation: each step with probability 0.5 - brightness +-32, contrast x0.5-1.5
    (before or after the HSV steps), saturation x0.5-1.5, hue +-18 (of 180)."""
    image = rgb.astype(np.float32)

    def contrast(x: np.ndarray) -> np.ndarray:
        return x * rng.uniform(0.5, 1.5) if rng.random() < 0.5 else x

    if rng.random() < 0.5:
        image = image + rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first:
        image = contrast(image)
    hsv = np.array(Image.fromarray(image.clip(0, 255).astype(np.uint8)).convert("HSV")).astype(np.float32)
    if rng.random() < 0.5:
        hsv[..., 1] = (hsv[..., 1] * rng.uniform(0.5, 1.5)).clip(0, 255)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-18, 18) * 256 / 180) % 256  # PIL hue spans 0..255
    image = np.array(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")).astype(np.float32)
    if not contrast_first:
        image = contrast(image)
    return image.clip(0, 255).astype(np.uint8)


def augment(
    rgb: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: uint8 RGB [S, S, 3] and label ids [S, S] with S = crop_size."""
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]} and label map {labels.shape} differ in size")
    short_side = int(rng.choice(config.short_sides))
    image, label = resize_pair(rgb, labels, short_side, config.max_long_side)
    image, label = random_crop_pair(image, label, config.crop_size, rng)
    if rng.random() < config.flip_probability:
        image, label = image[:, ::-1].copy(), label[:, ::-1].copy()
    if config.photometric:
        image = photometric_jitter(image, rng)
    return image, label


def targets_from_labels(labels: np.ndarray, id_to_index: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(class indices [T], binary masks [T, H, W]) of the taxonomy classes present; ignore and
    ids outside the taxonomy are left out."""
    present = [int(v) for v in np.unique(labels) if int(v) != IGNORE and int(v) in id_to_index]
    indices = np.array([id_to_index[v] for v in present], dtype=np.int64)
    masks = np.stack([labels == v for v in present]) if present else np.zeros((0, *labels.shape), dtype=bool)
    return indices, masks
