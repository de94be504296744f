"""Fine-tuning samples: augmentation keeps image and labels aligned, targets from label maps."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipeline.training.data import (
    IGNORE,
    TRAIN_SHORT_SIDES,
    AugmentConfig,
    SampleOrder,
    TrainingSampleLoader,
    augment,
    photometric_jitter,
    random_crop_pair,
    read_training_labels,
    resize_pair,
    targets_from_labels,
)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    rgb = skimage.data.coffee()  # 400 x 600
    labels = np.full(rgb.shape[:2], 3, dtype=np.uint16)
    labels[:, 300:] = 7
    labels[:20] = IGNORE
    return rgb, labels


def test_recipe_short_sides_are_half_to_one_and_a_half_of_640():
    assert TRAIN_SHORT_SIDES == (320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960)


def test_recipe_scales_to_other_crop_sizes():
    assert AugmentConfig.for_crop(640) == AugmentConfig()
    small = AugmentConfig.for_crop(64, photometric=False)
    assert small.short_sides == (32, 38, 45, 51, 58, 64, 70, 77, 83, 90, 96)
    assert small.max_long_side == 256 and small.crop_size == 64 and not small.photometric


def _png(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    return buffer.getvalue()


def test_label_files_keep_their_ids_and_ignore_becomes_one_value():
    eight = np.array([[1, 2], [255, 0]], dtype=np.uint8)
    assert read_training_labels(_png(eight)).tolist() == [[1, 2], [IGNORE, 0]]
    sixteen = np.array([[255, 846], [65535, 0]], dtype=np.uint16)  # 255 is a class in 16-bit maps
    labels = read_training_labels(_png(sixteen))
    assert labels.dtype == np.uint16 and labels.tolist() == [[255, 846], [IGNORE, 0]]
    with pytest.raises(ValueError, match="one channel"):
        read_training_labels(_png(np.zeros((2, 2, 3), np.uint8)))


def test_labels_follow_the_geometry_with_nearest_neighbour():
    rgb, labels = _pair()
    image, label = resize_pair(rgb, labels, 800, 2560)
    assert image.shape == (800, 1200, 3) and label.shape == (800, 1200)
    assert set(np.unique(label).tolist()) == {3, 7, IGNORE}  # no blended ids
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, label = augment(rgb, labels, AugmentConfig(photometric=False), rng)
        assert image.shape == (640, 640, 3) and label.shape == (640, 640)
        assert set(np.unique(label).tolist()) <= {3, 7, IGNORE}
        # the boundary between the two classes is vertical: every row has at most one switch
        valid = label[(label != IGNORE).all(axis=1)]
        assert all(np.count_nonzero(np.diff(row.astype(int))) <= 1 for row in valid)


def test_small_images_are_padded_with_ignore():
    rgb, labels = _pair()
    image, label = random_crop_pair(rgb[:100, :200], labels[:100, :200], 640, np.random.default_rng(0))
    assert (label[100:] == IGNORE).all() and (label[:, 200:] == IGNORE).all()
    assert (image[100:] == 128).all()


def test_flip_and_photometric_jitter():
    rgb, labels = _pair()
    flips = set()
    rng = np.random.default_rng(1)
    for _ in range(12):
        _, label = augment(rgb, labels, AugmentConfig(short_sides=(640,), photometric=False), rng)
        row = label[300]
        flips.add(int(row[0]) == 7)
    assert flips == {True, False}  # both orientations happen
    jittered = photometric_jitter(rgb, np.random.default_rng(3))
    assert jittered.shape == rgb.shape and jittered.dtype == np.uint8
    assert np.abs(jittered.astype(int) - rgb).mean() > 1


def test_augment_none_is_the_resize_and_crop_alone():
    rgb, labels = _pair()
    assert AugmentConfig.named("full", 64) == AugmentConfig.for_crop(64)
    plain = AugmentConfig.named("none", 64)
    square = rgb[:, 100:500], labels[:, 100:500]  # 400 x 400
    expected = resize_pair(*square, 64, 256)
    rng = np.random.default_rng(0)
    for _ in range(6):  # no flip, no colour, no scale: the same sample every time
        image, label = augment(*square, plain, rng)
        assert np.array_equal(image, expected[0]) and np.array_equal(label, expected[1])
    image, label = augment(rgb, labels, plain, rng)  # a wide image: the short side fits the crop
    assert image.shape == (64, 64, 3) and label.shape == (64, 64)
    assert (label[-1] != IGNORE).all()  # resized to the crop, not padded


def test_targets_from_label_maps():
    labels = np.array([[3, 3, IGNORE], [7, 9, 3]], dtype=np.uint16)
    indices, masks = targets_from_labels(labels, {3: 0, 7: 1, 12: 2})  # 9 is not in the taxonomy
    assert indices.tolist() == [0, 1]
    assert masks.tolist() == [
        [[True, True, False], [False, False, True]],
        [[False, False, False], [True, False, False]],
    ]
    empty_indices, empty_masks = targets_from_labels(np.full((2, 2), IGNORE, np.uint16), {3: 0})
    assert empty_indices.shape == (0,) and empty_masks.shape == (0, 2, 2)
    with pytest.raises(ValueError, match="differ in size"):
        augment(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4), np.uint8), AugmentConfig(), np.random.default_rng())


def test_sample_order_visits_every_pair_once_per_epoch_in_a_new_order():
    order = SampleOrder(num_pairs=5, seed=3)
    cache: dict = {}
    epochs = [[order.pair_index(e * 5 + i, cache) for i in range(5)] for e in range(3)]
    assert all(sorted(epoch) == [0, 1, 2, 3, 4] for epoch in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    assert [order.pair_index(7, {})] == [epochs[1][2]]  # the same from a fresh cache (a resumed run)


def test_loader_is_deterministic_per_sample_and_replaces_broken_pairs(tmp_path):
    images, labels = [], []
    for i in range(3):
        rgb = skimage.data.astronaut()[i * 50 : i * 50 + 200, :240]
        ids = np.full(rgb.shape[:2], 1 + i, dtype=np.uint8)
        images.append(tmp_path / f"{i}.png")
        labels.append(tmp_path / f"{i}_labels.png")
        Image.fromarray(rgb).save(images[-1])
        Image.fromarray(ids).save(labels[-1])
    images[1].write_bytes(b"")  # 0 bytes
    pairs = ([str(p) for p in images], [str(p) for p in labels])
    loader = TrainingSampleLoader([pairs], SampleOrder(3, seed=0), AugmentConfig.for_crop(64))
    batch = loader({"data": np.arange(6)})
    assert batch["image"].shape == (6, 64, 64, 3) and batch["labels"].shape == (6, 64, 64)
    assert batch["sample"].tolist() == list(range(6))
    broken = [s for s in batch["skipped"] if s]
    assert len(broken) == 2 and all("1.png" in s and "empty" in s for s in broken)  # once per epoch
    assert 2 not in np.unique(batch["labels"])  # the broken pair's class never appears
    again = TrainingSampleLoader([pairs], SampleOrder(3, seed=0), AugmentConfig.for_crop(64))({"data": np.arange(4, 6)})
    assert np.array_equal(again["image"], batch["image"][4:]) and np.array_equal(again["labels"], batch["labels"][4:])
