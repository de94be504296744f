"""Semantic-segmentation metrics exactly as the evaluator the SAN paper uses (detectron2's
SemSegEvaluator): a confusion matrix over classes plus one column for ignored ground truth.

Rows are predictions, columns ground truth. Pixels whose ground truth is the ignore label are
counted in the last column and never enter the metrics. Class accuracy and IoU are averaged over
classes present in the ground truth; a class present but never predicted counts with IoU 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ConfusionMatrix:
    """[C+1, C+1] int64 counts; merge partial matrices (one per image, block or worker) with `+`."""

    counts: np.ndarray

    @classmethod
    def empty(cls, num_classes: int) -> ConfusionMatrix:
        return cls(np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64))

    @property
    def num_classes(self) -> int:
        return self.counts.shape[0] - 1

    @classmethod
    def from_maps(
        cls, prediction: np.ndarray, ground_truth: np.ndarray, num_classes: int, ignore_label: int = 255
    ) -> ConfusionMatrix:
        """prediction: class indices 0..C-1; ground_truth: 0..C-1 or ignore_label."""
        if prediction.shape != ground_truth.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth {ground_truth.shape} differ in size")
        pred = prediction.astype(np.int64).ravel()
        gt = ground_truth.astype(np.int64).ravel().copy()
        gt[gt == ignore_label] = num_classes
        if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
            raise ValueError(f"predicted classes must lie in 0..{num_classes - 1}")
        if gt.size and (gt.min() < 0 or gt.max() > num_classes):
            raise ValueError(f"ground-truth classes must lie in 0..{num_classes - 1} or be {ignore_label}")
        size = num_classes + 1
        return cls(np.bincount(size * pred + gt, minlength=size * size).reshape(size, size))

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return ConfusionMatrix(self.counts + other.counts)

    def metrics(self) -> dict[str, float | list[float]]:
        """mIoU, fwIoU, mACC, pACC (percent) and per-class IoU/ACC (NaN for classes absent from GT)."""
        c = self.num_classes
        tp = self.counts.diagonal()[:-1].astype(np.float64)
        pos_gt = self.counts[:-1, :-1].sum(axis=0).astype(np.float64)
        pos_pred = self.counts[:-1, :-1].sum(axis=1).astype(np.float64)
        acc = np.full(c, np.nan)
        iou = np.full(c, np.nan)
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou_valid = acc_valid & (union > 0)
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        total = pos_gt.sum()
        weights = pos_gt / total if total else np.zeros(c)
        return {
            "mIoU": 100 * float(iou[iou_valid].sum() / iou_valid.sum()) if iou_valid.any() else float("nan"),
            "fwIoU": 100 * float((iou[iou_valid] * weights[iou_valid]).sum()),
            "mACC": 100 * float(acc[acc_valid].sum() / acc_valid.sum()) if acc_valid.any() else float("nan"),
            "pACC": 100 * float(tp.sum() / total) if total else float("nan"),
            "IoU": [100 * float(v) for v in iou],
            "ACC": [100 * float(v) for v in acc],
        }
