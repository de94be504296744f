"""What a report says about a labeling output, gathered in one pass over its rows: counts and
errors, pixels and images per class, the confidence of every labeled row, the least confident
rows and an example of each class. Rows stream file by file; the shown rows are bounded (a heap
of the least confident, one example per class), while the confidence values behind the
histograms are kept whole: a few floats per row."""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq

from ..labeling.progress import error_kind
from ..results import MANIFEST_NAME, is_own_result, result_files

COLUMNS = [
    "image_uri",
    "video_uri",
    "error",
    "error_kind",
    "segments",
    "mean_score",
    "mean_margin",
    "uncertain_fraction",
]


@dataclass(order=True)
class Example:
    """A row to show: its sort key first (heapq keeps the largest keys)."""

    key: Any  # the review key (least confident) or a segment's area (class examples)
    image_uri: str = field(compare=False)
    video_uri: str | None = field(compare=False, default=None)
    detail: dict[str, Any] = field(compare=False, default_factory=dict)


@dataclass
class OutputSummary:
    manifest: dict[str, Any] | None
    rows: int = 0
    labeled: int = 0
    videos: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by kind of error (exception name)
    error_kinds: Counter[str] = field(default_factory=Counter)  # transient / permanent
    class_pixels: Counter[int] = field(default_factory=Counter)
    class_images: Counter[int] = field(default_factory=Counter)
    class_names: dict[int, str] = field(default_factory=dict)
    mean_scores: list[float] = field(default_factory=list)
    mean_margins: list[float] = field(default_factory=list)
    uncertain_fractions: list[float] = field(default_factory=list)
    segment_margins: list[float] = field(default_factory=list)
    least_confident: list[Example] = field(default_factory=list)  # a heap of the N least confident
    class_examples: dict[int, Example] = field(default_factory=dict)  # per class, its largest segment


def review_key(row: Mapping[str, Any]) -> tuple[float, float]:
    """Larger = less confident: the share of uncertain pixels, then the mean margin, reversed."""
    return (float(row.get("uncertain_fraction") or 0.0), -float(row.get("mean_margin") or 0.0))


def summarize(
    labels: str, storage_options: Mapping[str, Any] | None = None, least: int = 12, examples: int = 24
) -> OutputSummary:
    """Read the labeling output `labels` once and summarize it (see the module's docstring)."""
    fs, root = fsspec.core.url_to_fs(labels, **(storage_options or {}))
    manifest_path = f"{root.rstrip('/')}/{MANIFEST_NAME}"
    manifest = json.loads(fs.cat(manifest_path)) if fs.exists(manifest_path) else None
    summary = OutputSummary(manifest)
    videos: set[str] = set()
    for path in filter(is_own_result, result_files(fs, root)):
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in COLUMNS if c in parquet.schema_arrow.names]
            table = parquet.read(columns=columns)
        for row in table.to_pylist():
            summary.rows += 1
            if row.get("video_uri"):
                videos.add(row["video_uri"])
            if row["error"] is not None:
                summary.errors[error_kind(row["error"])] += 1
                summary.error_kinds[row.get("error_kind") or "unknown"] += 1
                continue
            summary.labeled += 1
            _add_row(summary, row, least, examples)
    summary.videos = len(videos)
    return summary


def _add_row(summary: OutputSummary, row: dict[str, Any], least: int, examples: int) -> None:
    if row.get("mean_margin") is not None:
        summary.mean_scores.append(row["mean_score"])
        summary.mean_margins.append(row["mean_margin"])
        summary.uncertain_fractions.append(row["uncertain_fraction"])
    entry = Example(review_key(row), row["image_uri"], row.get("video_uri"), {"row": _light(row)})
    if len(summary.least_confident) < least:
        heapq.heappush(summary.least_confident, entry)
    elif entry > summary.least_confident[0]:
        heapq.heapreplace(summary.least_confident, entry)
    for segment in row["segments"]:
        class_id = segment["class_id"]
        summary.class_names[class_id] = segment["class_name"]
        summary.class_pixels[class_id] += segment["area"]
        summary.class_images[class_id] += 1
        if segment.get("margin") is not None:
            summary.segment_margins.append(segment["margin"])
        best = summary.class_examples.get(class_id)
        if (best is None or segment["area"] > best.key) and (
            best is not None or len(summary.class_examples) < examples
        ):
            summary.class_examples[class_id] = Example(
                segment["area"], row["image_uri"], row.get("video_uri"), {"row": _light(row), "class_id": class_id}
            )


def _light(row: dict[str, Any]) -> dict[str, Any]:
    """What a shown example needs later (its label map is read again then, not kept now)."""
    keep = ("image_uri", "video_uri", "mean_score", "mean_margin", "uncertain_fraction")
    return {k: row.get(k) for k in keep} | {"classes": [s["class_name"] for s in row["segments"]]}
