"""What a report says about a labeling output, gathered in one pass over its rows: counts and
errors, pixels and images per class, the confidence of every labeled row, the least confident
rows and an example of each class. Rows stream file by file, and what is kept is bounded: a heap
of the least confident, one example per class, and the confidence histograms as counts in fixed
bins (margins and shares lie in [0, 1]). The mean score has no fixed range, so its values are
kept, 4 bytes a labeled row (40 MB at 10 million rows)."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..labeling.progress import error_kind
from ..store import LabelStore

COLUMNS = [
    "image_uri",
    "video_uri",
    "error",
    "error_kind",
    "segments",
    "mean_confidence",
    "mean_margin",
    "uncertain_fraction",
]
# What the report reads of each segment: not its RLE mask and box, most of a row's bytes.
SEGMENT_FIELDS = ("class_id", "class_name", "area", "margin")


CONFIDENCE_BINS = 30


@dataclass
class UnitHistogram:
    """Counts of values in [0, 1] in equal bins (a value outside is counted in the nearest end
    bin): its size is the bins', whatever the number of values."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(CONFIDENCE_BINS, dtype=np.int64))

    def add(self, values: np.ndarray) -> None:
        self.counts += np.histogram(np.clip(values, 0.0, 1.0), bins=len(self.counts), range=(0.0, 1.0))[0]

    def counts_and_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """As `np.histogram` returns them."""
        return self.counts, np.linspace(0.0, 1.0, len(self.counts) + 1)

    def __len__(self) -> int:
        """How many values were counted."""
        return int(self.counts.sum())


@dataclass(order=True)
class Example:
    """A row to show: its sort key first (heapq keeps the largest keys)."""

    key: Any  # the review key (least confident) or a segment's area (class examples)
    image_uri: str = field(compare=False)
    video_uri: str | None = field(compare=False, default=None)
    detail: dict[str, Any] = field(compare=False, default_factory=dict)
    # the result file the row is in and its index there, so that its label map is read alone
    source: tuple[str, int] | None = field(compare=False, default=None)


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
    mean_confidences: UnitHistogram = field(default_factory=UnitHistogram)
    mean_margins: UnitHistogram = field(default_factory=UnitHistogram)
    uncertain_fractions: UnitHistogram = field(default_factory=UnitHistogram)
    segment_margins: UnitHistogram = field(default_factory=UnitHistogram)
    least_confident: list[Example] = field(default_factory=list)  # a heap of the N least confident
    class_examples: dict[int, Example] = field(default_factory=dict)  # per class, its largest segment


def review_key(row: Mapping[str, Any]) -> tuple[float, float]:
    """Larger = less confident: the share of uncertain pixels, then the mean margin, reversed."""
    return (float(row.get("uncertain_fraction") or 0.0), -float(row.get("mean_margin") or 0.0))


def summarize(
    labels: str, storage_options: Mapping[str, Any] | None = None, least: int = 12, examples: int = 24
) -> OutputSummary:
    """Read the labeling output `labels` once and summarize it (see the module's docstring)."""
    store = LabelStore(labels, storage_options)
    summary = OutputSummary(store.manifest())
    videos: set[str] = set()
    for path, table in store.tables(report_columns):
        _add_confidence(summary, table)
        for index, row in enumerate(table.to_pylist()):
            summary.rows += 1
            if row.get("video_uri"):
                videos.add(row["video_uri"])
            if row["error"] is not None:
                summary.errors[error_kind(row["error"])] += 1
                summary.error_kinds[row.get("error_kind") or "unknown"] += 1
                continue
            summary.labeled += 1
            _add_row(summary, row, (path, index), least, examples)
    summary.videos = len(videos)
    return summary


def report_columns(schema: pq.ParquetSchema) -> list[str]:
    """The Parquet columns (leaf paths) a report reads of a result file: `COLUMNS`, and of the
    segments only `SEGMENT_FIELDS` (paths such as segments.list.element.area: Parquet reads those
    leaves alone, so the masks' bytes are never fetched or decoded)."""
    paths = [schema.column(i).path for i in range(len(schema))]
    segment_fields = [
        path
        for path in paths
        if path.startswith("segments.") and path.count(".") == 3 and path.rsplit(".", 1)[1] in SEGMENT_FIELDS
    ]
    return [path for path in paths if path in COLUMNS] + segment_fields


def _add_confidence(summary: OutputSummary, table: pa.Table) -> None:
    """A file's confidence values into the histograms, column by column (rows without them, errors
    and outputs of releases before confidence, have nulls)."""
    if "mean_margin" not in table.column_names:
        return
    rated = table.filter(pc.is_valid(table["mean_margin"]))
    if "mean_confidence" in table.column_names:  # schema 5 on
        summary.mean_confidences.add(pc.drop_null(rated["mean_confidence"]).to_numpy())
    summary.mean_margins.add(rated["mean_margin"].to_numpy())
    summary.uncertain_fractions.add(rated["uncertain_fraction"].to_numpy())
    segments = pc.list_flatten(rated["segments"])
    if segments.type.get_field_index("margin") >= 0:
        margins = pc.struct_field(segments, "margin")
        summary.segment_margins.add(pc.drop_null(margins).to_numpy())


def _add_row(summary: OutputSummary, row: dict[str, Any], source: tuple[str, int], least: int, examples: int) -> None:
    entry = Example(review_key(row), row["image_uri"], row.get("video_uri"), {"row": _light(row)}, source)
    if len(summary.least_confident) < least:
        heapq.heappush(summary.least_confident, entry)
    elif entry > summary.least_confident[0]:
        heapq.heapreplace(summary.least_confident, entry)
    for segment in row["segments"]:
        class_id = segment["class_id"]
        summary.class_names[class_id] = segment["class_name"]
        summary.class_pixels[class_id] += segment["area"]
        summary.class_images[class_id] += 1
        best = summary.class_examples.get(class_id)
        if (best is None or segment["area"] > best.key) and (
            best is not None or len(summary.class_examples) < examples
        ):
            detail = {"row": _light(row), "class_id": class_id}
            summary.class_examples[class_id] = Example(
                segment["area"], row["image_uri"], row.get("video_uri"), detail, source
            )


def _light(row: dict[str, Any]) -> dict[str, Any]:
    """What a shown example needs later (its label map is read again then, not kept now)."""
    keep = ("image_uri", "video_uri", "mean_confidence", "mean_margin", "uncertain_fraction")
    return {k: row.get(k) for k in keep} | {"classes": [s["class_name"] for s in row["segments"]]}
