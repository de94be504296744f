"""Score labeling outputs against ground truth with the SAN benchmark protocol.

Ground truth is a label map per image whose values are class *indices* in the taxonomy's order
(0..C-1, the detectron2 convention of the SAN benchmarks) plus one ignore value (255 for PNG,
65535 for the 16-bit TIFFs of ADE-847 and PASCAL Context 459). Predictions are the labeling job's
label maps of taxonomy *ids*. Pixels a prediction leaves unlabeled (distractor classes) count as
wrong for their ground-truth class.

Confusion matrices are computed per block of rows (Ray Data map tasks) and summed, so a dataset
of any size evaluates in bounded memory on a cluster.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from schemas.taxonomy import Taxonomy

from ..inputs import read_manifest_rows
from ..masks.label_maps import LABEL_MAP_EXTENSIONS, decode_label_map
from ..storage import with_protocol
from ..store import LabelStore
from .metrics import ConfusionMatrix


def stem(uri: str) -> str:
    return PurePosixPath(uri.rstrip("/")).stem


def list_ground_truth(source: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Image stem -> ground-truth URI, from a folder of label maps or a manifest (.csv/.parquet
    with `image_uri` and `label_uri`; a .csv may also use `uri` for the image)."""
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    if fs.isdir(path):
        return {
            stem(p): with_protocol(p, source) for p in sorted(fs.find(path)) if p.lower().endswith(LABEL_MAP_EXTENSIONS)
        }
    pairs = {}
    for row in read_manifest_rows(fs, path, ("label_uri",), source):
        image = row.get("image_uri") or row.get("uri")
        if not image or not row.get("label_uri"):
            raise ValueError(f"manifest {source} needs image_uri and label_uri columns")
        pairs[stem(image)] = row["label_uri"]
    return pairs


@dataclass(frozen=True)
class ScoringSpec:
    """What a scoring task needs: how prediction ids map to class indices, and the ignore value."""

    id_to_index: dict[int, int]  # taxonomy id -> class index; unlabeled (0) -> num_classes
    num_classes: int
    ignore_label: int

    @classmethod
    def for_taxonomy(cls, taxonomy: Taxonomy, ignore_label: int) -> ScoringSpec:
        mapping = {c.id: i for i, c in enumerate(taxonomy.classes)}
        mapping[0] = len(taxonomy.classes)
        return cls(mapping, len(taxonomy.classes), ignore_label)

    def confusion(self, label_map_ids: np.ndarray, ground_truth: np.ndarray) -> ConfusionMatrix:
        """One image's confusion matrix, with an extra predicted class for unlabeled pixels (it is
        never in the ground truth, so it only lowers the scores of the classes it covers)."""
        lookup = np.full(max(self.id_to_index) + 1, self.num_classes, dtype=np.int64)
        for class_id, index in self.id_to_index.items():
            lookup[class_id] = index
        prediction = lookup[label_map_ids]
        invalid = (ground_truth >= self.num_classes) & (ground_truth != self.ignore_label)
        if invalid.any():
            raise ValueError(
                f"ground truth has values {sorted(set(ground_truth[invalid].tolist()))[:5]} outside "
                f"0..{self.num_classes - 1} and the ignore value {self.ignore_label}"
            )
        gt = np.where(ground_truth == self.ignore_label, self.num_classes + 1, ground_truth)
        return ConfusionMatrix.from_maps(prediction, gt, self.num_classes + 1, ignore_label=self.num_classes + 1)


def score_rows(
    batch: dict[str, np.ndarray],
    spec: ScoringSpec,
    ground_truth: dict[str, str],
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Ray Data map_batches function: the summed confusion counts of a batch of output rows,
    plus how many rows were scored, had no ground truth, or had no prediction."""
    size = spec.num_classes + 2
    total = np.zeros((size, size), dtype=np.int64)
    scored = missing_gt = errors = 0
    for uri, png, error in zip(batch["image_uri"], batch["label_map_png"], batch["error"], strict=True):
        gt_uri = ground_truth.get(stem(str(uri)))
        if gt_uri is None:
            missing_gt += 1
            continue
        if isinstance(error, str) or png is None:
            errors += 1
            continue
        with fsspec.open(gt_uri, "rb", **(storage_options or {})) as f:
            gt = decode_label_map(f.read()).astype(np.int64)
        total += spec.confusion(decode_label_map(png).astype(np.int64), gt).counts
        scored += 1
    return {
        "counts": total.reshape(1, -1),
        "scored": np.array([scored]),
        "missing_ground_truth": np.array([missing_gt]),
        "errors": np.array([errors]),
    }


def evaluate_output(
    output: str,
    ground_truth_source: str,
    taxonomy: Taxonomy,
    ignore_label: int = 255,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a labeling output (Parquet) against ground truth on the connected Ray cluster."""
    ground_truth = list_ground_truth(ground_truth_source, storage_options)
    spec = ScoringSpec.for_taxonomy(taxonomy, ignore_label)
    dataset = LabelStore(output, storage_options).dataset(["image_uri", "label_map_png", "error"])
    partial = dataset.map_batches(
        score_rows,
        fn_kwargs={"spec": spec, "ground_truth": ground_truth, "storage_options": storage_options},
        batch_size=16,
        batch_format="numpy",
    )
    size = spec.num_classes + 2
    total = ConfusionMatrix.empty(size - 1)
    scored = missing = errors = 0
    for batch in partial.iter_batches(batch_format="numpy", batch_size=None):
        total = total + ConfusionMatrix(batch["counts"].sum(axis=0).reshape(size, size))
        scored += int(batch["scored"].sum())
        missing += int(batch["missing_ground_truth"].sum())
        errors += int(batch["errors"].sum())
    result = report(total, taxonomy, {"scored": scored, "missing_ground_truth": missing, "errors": errors})
    classes = spec.num_classes  # counts are [prediction, ground truth]: ground-truth rows for people
    result["confusion"] = total.counts.T[:classes, : classes + 1]  # the last column: left unlabeled
    return result


def report(confusion: ConfusionMatrix, taxonomy: Taxonomy, counts: dict[str, int]) -> dict[str, Any]:
    """Every number: summary metrics in percent and per-class IoU/accuracy (null when a class is
    absent from the ground truth). The extra 'unlabeled' prediction class is not reported."""
    metrics = confusion.metrics()
    names = [c.name for c in taxonomy.classes]
    per_class = [
        {"id": c.id, "name": c.name, "IoU": _finite(metrics["IoU"][i]), "ACC": _finite(metrics["ACC"][i])}
        for i, c in enumerate(taxonomy.classes)
    ]
    return {
        "taxonomy": taxonomy.name,
        "num_classes": len(names),
        "images": counts,
        "mIoU": metrics["mIoU"],
        "fwIoU": metrics["fwIoU"],
        "mACC": metrics["mACC"],
        "pACC": metrics["pACC"],
        "per_class": per_class,
    }


def _finite(value: float) -> float | None:
    return None if value != value else value  # NaN -> null in JSON


def markdown_table(result: dict[str, Any]) -> str:
    lines = [
        f"# {result['taxonomy']}: mIoU {result['mIoU']:.2f}, fwIoU {result['fwIoU']:.2f}, "
        f"mACC {result['mACC']:.2f}, pACC {result['pACC']:.2f}",
        "",
        f"{result['images']['scored']} images scored.",
        "",
        "| class | IoU | ACC |",
        "|---|---|---|",
    ]
    ranked = sorted(result["per_class"], key=lambda r: -1 if r["IoU"] is None else r["IoU"], reverse=True)
    for row in ranked:
        iou = "absent" if row["IoU"] is None else f"{row['IoU']:.2f}"
        acc = "absent" if row["ACC"] is None else f"{row['ACC']:.2f}"
        lines.append(f"| {row['name']} | {iou} | {acc} |")
    return "\n".join(lines) + "\n"


def iou_bar_chart(result: dict[str, Any], max_classes: int = 60) -> bytes:
    """PNG: one horizontal bar per class present in the ground truth, sorted by IoU."""
    rows = sorted((r for r in result["per_class"] if r["IoU"] is not None), key=lambda r: -r["IoU"])[:max_classes]
    font = ImageFont.load_default()
    row_h, label_w, bar_w = 14, 180, 400
    image = Image.new("RGB", (label_w + bar_w + 60, 30 + row_h * max(1, len(rows))), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), f"{result['taxonomy']}  mIoU {result['mIoU']:.1f}", fill="black", font=font)
    for k, row in enumerate(rows):
        top = 26 + k * row_h
        draw.text((6, top), row["name"][:28], fill="black", font=font)
        width = int(bar_w * row["IoU"] / 100)
        draw.rectangle([label_w, top + 2, label_w + max(width, 1), top + row_h - 3], fill=(70, 130, 180))
        draw.text((label_w + width + 4, top), f"{row['IoU']:.1f}", fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_reports(
    result: dict[str, Any], destination: str, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """metrics.json, metrics.md and iou.png under `destination` (and confusion.npy, the
    confusion matrix `san report` draws, when `result` carries it)."""
    fs, root = fsspec.core.url_to_fs(destination, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    confusion = result.get("confusion")
    result = {k: v for k, v in result.items() if k != "confusion"}
    files = {
        "metrics.json": json.dumps(result, indent=2).encode(),
        "metrics.md": markdown_table(result).encode(),
        "iou.png": iou_bar_chart(result),
    }
    if confusion is not None:  # [ground truth, prediction + unlabeled] pixel counts
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(confusion))
        files["confusion.npy"] = buffer.getvalue()
    written = []
    for name, data in files.items():
        target = f"{root.rstrip('/')}/{name}"
        fs.pipe(target, data)
        written.append(target)
    return written
