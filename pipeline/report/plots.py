"""The report's figures, drawn with matplotlib (Agg, no display) and returned as PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

WIDTH_IN = 7.5


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def class_distribution(
    pixels: Mapping[int, int], images: Mapping[int, int], names: Mapping[int, str], top: int = 30
) -> bytes:
    """Share of labeled pixels and number of images per class, the `top` classes by pixels."""
    order = sorted(pixels, key=lambda c: -pixels[c])[:top]
    total = sum(pixels.values()) or 1
    labels = [names.get(c, str(c)) for c in order][::-1]
    figure, (left, right) = plt.subplots(1, 2, figsize=(WIDTH_IN, 0.25 * len(order) + 1.2), sharey=True)
    left.barh(labels, [100 * pixels[c] / total for c in order][::-1], color="#4682b4")
    left.set_xlabel("% of labeled pixels")
    right.barh(labels, [images[c] for c in order][::-1], color="#8fbc8f")
    right.set_xlabel("images (or frames) with the class")
    figure.suptitle(f"Classes ({len(pixels)} found; top {len(order)} by pixels)")
    return _png(figure)


def histograms(series: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """One histogram per named series (its counts and bin edges), side by side."""
    figure, axes = plt.subplots(1, len(series), figsize=(WIDTH_IN, 2.6), squeeze=False)
    for axis, (name, (counts, edges)) in zip(axes[0], series.items(), strict=True):
        if counts.sum():
            axis.stairs(counts, edges, fill=True, color="#cd853f")
        axis.set_title(name, fontsize=9)
        axis.set_ylabel("rows" if axis is axes[0][0] else "")
    return _png(figure)


def iou_bars(per_class: Sequence[Mapping[str, object]], top: int = 40) -> bytes:
    """Per-class IoU (classes present in the ground truth), the `top` lowest first: where to look."""
    present = sorted((r for r in per_class if r["IoU"] is not None), key=lambda r: r["IoU"])[:top]  # type: ignore[arg-type,return-value]
    figure, axis = plt.subplots(figsize=(WIDTH_IN, 0.22 * len(present) + 1.2))
    axis.barh([str(r["name"]) for r in present][::-1], [float(r["IoU"]) for r in present][::-1], color="#4682b4")  # type: ignore[arg-type]
    axis.set_xlabel("IoU (%)")
    axis.set_xlim(0, 100)
    axis.set_title(f"Per-class IoU, the {len(present)} lowest")
    return _png(figure)


def confusion(matrix: np.ndarray, names: Sequence[str], top: int = 20) -> bytes:
    """Row-normalised confusion (ground truth rows, predictions columns) of the `top` classes with
    the most ground-truth pixels; the last column is pixels left unlabeled."""
    classes = len(names)
    counts = matrix[:classes, : classes + 1].astype(np.float64)
    chosen = np.argsort(-counts.sum(axis=1))[:top]
    columns = [*chosen.tolist(), classes]
    sub = counts[np.ix_(chosen, columns)]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1)
    labels = [names[i] for i in chosen]
    figure, axis = plt.subplots(figsize=(WIDTH_IN, WIDTH_IN * 0.85))
    image = axis.imshow(sub, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(columns)), [*labels, "unlabeled"], rotation=90, fontsize=7)
    axis.set_yticks(range(len(labels)), labels, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("ground truth")
    axis.set_title(f"Confusion, the {len(labels)} most frequent classes (rows sum to 1)")
    figure.colorbar(image, ax=axis, fraction=0.04)
    return _png(figure)
