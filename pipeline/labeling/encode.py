"""The hand-off between a labeling actor and the CPU tasks after it, and those tasks' work.

An actor (`stages.SanLabeler`) returns one Arrow table per batch in `DEVICE_SCHEMA`: each image's
label map and confidence sums as raw arrays, or its error. `encode_rows`, a Ray Data task on
CPUs, turns that into output rows (`schemas.output.LabelRow`): the label-map PNG, the segments'
RLE, the confidence, the provenance fields. Raw label maps are 2 bytes a pixel; they cross the
object store once, and the actor never waits on an encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.output import LabelRow, Provenance, label_row_schema

from ..media.images import describe_error
from ..retries import PERMANENT
from .inference import LabeledImage, LabelMapArrays

log = logging.getLogger(__name__)

# One row per image: what the actor knows of it. Arrays are raw little-endian bytes, row-major.
DEVICE_SCHEMA = pa.schema(
    [
        pa.field("image_uri", pa.string()),
        pa.field("width", pa.int32()),  # the label map's (the original image's); -1 when it failed to load
        pa.field("height", pa.int32()),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),
        pa.field("label_map", pa.large_binary()),  # [height, width] uint16 taxonomy ids
        pa.field("score_sums", pa.large_binary()),  # [ids] float64
        pa.field("margin_sums", pa.large_binary()),  # [ids] float64
        pa.field("confidence_sums", pa.large_binary()),  # [ids] float64
        pa.field("uncertain_pixels", pa.int64()),
        pa.field("margin_map", pa.large_binary()),  # [height, width] uint8, with --uncertainty-map
    ]
)


def binary_column(arrays: Sequence[np.ndarray | None]) -> pa.LargeBinaryArray:
    """numpy arrays (or None for null) -> one Arrow binary column of their bytes, copied once."""
    sizes = np.array([0 if a is None else a.nbytes for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    present = [np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays if a is not None]
    data = np.concatenate(present) if present else np.zeros(0, dtype=np.uint8)
    valid = pa.array([a is not None for a in arrays], type=pa.bool_())
    nulls = len(arrays) - len(present)
    validity = valid.buffers()[1] if nulls else None
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(arrays), [validity, pa.py_buffer(offsets), pa.py_buffer(data)], nulls
    )


def device_table(
    batch: Mapping[str, Sequence[Any]],
    errors: Sequence[str | None],
    kinds: Sequence[str | None],
    labeled: Mapping[int, LabelMapArrays],
) -> pa.Table:
    """An actor's answer for a loaded batch (`images.load_images`): `labeled` holds the arrays of
    the rows that were labeled, by row number; the others carry their error."""
    count = len(errors)
    found = [labeled.get(i) for i in range(count)]
    return pa.table(
        {
            "image_uri": pa.array([str(u) for u in batch["image_uri"]], pa.string()),
            "width": pa.array(np.asarray(batch["width"], dtype=np.int32)),
            "height": pa.array(np.asarray(batch["height"], dtype=np.int32)),
            "error": pa.array(list(errors), pa.string()),
            "error_kind": pa.array(list(kinds), pa.string()),
            "label_map": binary_column([None if a is None else a.label_map for a in found]),
            "score_sums": binary_column([None if a is None else a.score_sums for a in found]),
            "margin_sums": binary_column([None if a is None else a.margin_sums for a in found]),
            "confidence_sums": binary_column([None if a is None else a.confidence_sums for a in found]),
            "uncertain_pixels": pa.array([0 if a is None else a.uncertain_pixels for a in found], pa.int64()),
            "margin_map": binary_column([None if a is None else a.margin_map for a in found]),
        },
        schema=DEVICE_SCHEMA,
    )


def _buffers(column: pa.ChunkedArray) -> list[memoryview | None]:
    """A binary column's values as views of Arrow's memory (no copy), None for null."""
    views: list[memoryview | None] = []
    for chunk in column.chunks:
        validity, offsets, data = chunk.buffers()
        starts = np.frombuffer(offsets, dtype=np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
        memory = memoryview(data) if data is not None else memoryview(b"")
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        views += [memory[starts[i] : starts[i + 1]] if valid[i] else None for i in range(len(chunk))]
    return views


def _row_readers(table: pa.Table) -> list[Callable[[], LabelMapArrays] | None]:
    """Per row of a `device_table`, a reader of its arrays (views of the table's memory) or None
    for an error row; a damaged row raises when read, not before."""
    label_maps, score_sums = _buffers(table["label_map"]), _buffers(table["score_sums"])
    margin_sums, margin_maps = _buffers(table["margin_sums"]), _buffers(table["margin_map"])
    confidence_sums = _buffers(table["confidence_sums"])
    heights, widths = table["height"].to_numpy(), table["width"].to_numpy()
    uncertain = table["uncertain_pixels"].to_numpy()

    def read(i: int) -> LabelMapArrays:
        shape = (int(heights[i]), int(widths[i]))
        margin_map = margin_maps[i]
        return LabelMapArrays(
            label_map=np.frombuffer(label_maps[i], dtype="<u2").reshape(shape),
            score_sums=np.frombuffer(score_sums[i], dtype="<f8"),
            margin_sums=np.frombuffer(margin_sums[i], dtype="<f8"),
            uncertain_pixels=int(uncertain[i]),
            margin_map=None if margin_map is None else np.frombuffer(margin_map, dtype=np.uint8).reshape(shape),
            confidence_sums=np.frombuffer(confidence_sums[i], dtype="<f8"),
        )

    return [None if label_maps[i] is None else partial(read, i) for i in range(table.num_rows)]


def arrays_of(table: pa.Table) -> list[LabelMapArrays | None]:
    """`device_table`'s rows back as arrays (views of the table's memory), None for error rows."""
    return [None if reader is None else reader() for reader in _row_readers(table)]


def row_fields(labeled: LabeledImage) -> dict[str, Any]:
    """What an output row takes from a labeled image (or video frame)."""
    return {
        "label_map_png": labeled.label_map_png,
        "segments": labeled.segments,
        "mean_confidence": labeled.mean_confidence,
        "mean_raw_score": labeled.mean_raw_score,
        "mean_margin": labeled.mean_margin,
        "uncertain_fraction": labeled.uncertain_fraction,
        "uncertainty_png": labeled.uncertainty_png,
    }


def provenance_fields(provenance: Provenance) -> dict[str, Any]:
    """The columns every row of a run shares: which weights and taxonomy made it."""
    return {
        "model_id": provenance.model_id,
        "checkpoint_digest": provenance.weights_digest,
        "taxonomy_digest": provenance.taxonomy.digest,
    }


def encode_rows(table: pa.Table, class_names: Mapping[int, str], provenance: Provenance, run_id: str) -> pa.Table:
    """Ray Data task: an actor's `device_table` -> output rows in the run's Parquet schema. An
    image whose arrays cannot be encoded gets an error row, never no row."""
    return _output_rows(
        table["image_uri"].to_pylist(),
        table["height"].to_pylist(),
        table["width"].to_pylist(),
        table["error"].to_pylist(),
        table["error_kind"].to_pylist(),
        _row_readers(table),
        class_names,
        provenance,
        run_id,
    )


def encode_labeled(
    batch: Mapping[str, Sequence[Any]],
    errors: Sequence[str | None],
    kinds: Sequence[str | None],
    labeled: Mapping[int, LabelMapArrays],
    class_names: Mapping[int, str],
    provenance: Provenance,
    run_id: str,
) -> pa.Table:
    """`encode_rows` of `device_table(batch, errors, kinds, labeled)` straight from the arrays, as
    an actor on CPUs does: no Arrow copy of its label maps beside them."""
    readers = [None if i not in labeled else partial(labeled.__getitem__, i) for i in range(len(errors))]
    return _output_rows(
        [str(u) for u in batch["image_uri"]],
        [int(h) for h in batch["height"]],
        [int(w) for w in batch["width"]],
        errors,
        kinds,
        readers,
        class_names,
        provenance,
        run_id,
    )


def _output_rows(
    uris: Sequence[str],
    heights: Sequence[int],
    widths: Sequence[int],
    errors: Sequence[str | None],
    kinds: Sequence[str | None],
    readers: Sequence[Callable[[], LabelMapArrays] | None],
    class_names: Mapping[int, str],
    provenance: Provenance,
    run_id: str,
) -> pa.Table:
    shared = provenance_fields(provenance)
    rows = []
    for i, reader in enumerate(readers):
        fields: dict[str, Any] = {"label_map_png": None, "segments": []}
        error, kind = errors[i], kinds[i]
        if reader is not None:
            try:
                fields = row_fields(reader().labeled_image(class_names))
            except Exception as e:  # a bug here must not lose the image's row
                log.exception("encoding the labels of %s failed", uris[i])
                error, kind = f"encoding labels failed: {describe_error(e)}", PERMANENT
        height, width = heights[i], widths[i]
        row = LabelRow(
            image_uri=uris[i],
            width=width if height > 0 else None,
            height=height if height > 0 else None,
            error=error,
            error_kind=kind,
            **fields,
            **shared,
        )
        rows.append(row.model_dump())
    return pa.Table.from_pylist(rows, schema=label_row_schema(provenance, run_id))
