"""The semantic-segmentation metrics against hand-computed confusion matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.metrics import ConfusionMatrix


def test_hand_computed_example_with_ignore_absent_class_and_never_predicted_class():
    # 3 classes. GT has classes 0 and 1 and two ignored pixels; class 2 is absent from GT but
    # predicted once; class 1 is never predicted correctly.
    gt = np.array([[0, 0, 0, 1], [1, 1, 255, 255]])
    pred = np.array([[0, 0, 2, 0], [0, 0, 1, 2]])
    cm = ConfusionMatrix.from_maps(pred, gt, num_classes=3)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 2  # pred 0, gt 0
    expected[2, 0] = 1  # pred 2, gt 0
    expected[0, 1] = 3  # pred 0, gt 1
    expected[1, 3] = 1  # pred 1 on an ignored pixel
    expected[2, 3] = 1  # pred 2 on an ignored pixel
    assert np.array_equal(cm.counts, expected)
    m = cm.metrics()
    # class 0: tp 2, gt 3, pred 5 -> IoU 2/6, ACC 2/3; class 1: tp 0, gt 3, pred 0 -> IoU 0, ACC 0
    # class 2: absent from GT -> NaN, excluded from the means
    assert m["IoU"][0] == pytest.approx(100 * 2 / 6) and m["IoU"][1] == 0.0 and math.isnan(m["IoU"][2])
    assert m["ACC"][0] == pytest.approx(100 * 2 / 3) and m["ACC"][1] == 0.0 and math.isnan(m["ACC"][2])
    assert m["mIoU"] == pytest.approx(100 * (2 / 6 + 0) / 2)
    assert m["mACC"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert m["pACC"] == pytest.approx(100 * 2 / 6)
    assert m["fwIoU"] == pytest.approx(100 * (0.5 * 2 / 6 + 0.5 * 0))


def test_perfect_predictions_score_100():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, size=(32, 48))
    gt[:4] = 255
    pred = np.where(gt == 255, 0, gt)
    m = ConfusionMatrix.from_maps(pred, gt, num_classes=5).metrics()
    assert m["mIoU"] == pytest.approx(100) and m["fwIoU"] == pytest.approx(100)
    assert m["mACC"] == pytest.approx(100) and m["pACC"] == pytest.approx(100)


def test_partial_matrices_merge_to_the_whole():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, size=(10, 64, 64))
    pred = rng.integers(0, 4, size=(10, 64, 64))
    whole = ConfusionMatrix.from_maps(pred, gt, 4)
    merged = ConfusionMatrix.empty(4)
    for p, g in zip(pred, gt, strict=True):
        merged = merged + ConfusionMatrix.from_maps(p, g, 4)
    assert np.array_equal(whole.counts, merged.counts)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="differ in size"):
        ConfusionMatrix.from_maps(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="predicted classes"):
        ConfusionMatrix.from_maps(np.full((2, 2), 3), np.zeros((2, 2)), 3)
    with pytest.raises(ValueError, match="ground-truth classes"):
        ConfusionMatrix.from_maps(np.zeros((2, 2)), np.full((2, 2), 7), 3)
