"""Which inputs still need labels, in bounded driver memory at any number of images.

A hash anti-join that spills to local disk (a "grace" hash join). The input URIs and the output's
row keys arrive as streams of Arrow batches; each batch is split by a hash of the URI into
`buckets` partitions appended to a scratch folder. Then each partition pair is joined in memory
with Arrow's hash kernels: the latest rows per source (an image, or a video, whose frames' rows
all live in one file), the sources that need no new attempt, and the inputs that are left. The
driver holds one batch or one partition at a time, never a Python
collection of every URI, and the work is Arrow's compiled kernels, not a Python loop per image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..retries import TRANSIENT
from .row_index import KEY_SCHEMA

BUCKETS = 64
SLICE_ROWS = 1 << 16  # rows hashed at once (the hash's temporaries are 8 bytes per URI byte)
INPUT_SCHEMA = pa.schema([("source_uri", pa.string()), ("position", pa.int64())])
# A fixed pseudo-random 64-bit weight per byte position (odd, so no byte value is lost).
_WEIGHTS = np.random.default_rng(20261125).integers(1, 2**63, size=4096, dtype=np.uint64) | np.uint64(1)


def uri_buckets(uris: pa.Array, buckets: int) -> np.ndarray:
    """A bucket in [0, buckets) per string, from a 64-bit hash of its bytes (vectorised: a weighted
    sum of bytes per string, then a multiply-xorshift finaliser to spread the bits)."""
    uris = uris.cast(pa.large_string())
    n = len(uris)
    offsets = np.frombuffer(uris.buffers()[1], dtype=np.int64)[uris.offset : uris.offset + n + 1]
    data = uris.buffers()[2]
    start, end = int(offsets[0]), int(offsets[-1])
    if data is None or end == start:
        return np.zeros(n, dtype=np.int64)
    raw = np.frombuffer(data, dtype=np.uint8)[start:end].astype(np.uint64)
    lengths = np.diff(offsets)
    starts = offsets[:-1] - start
    position = np.arange(end - start, dtype=np.int64) - np.repeat(starts, lengths)
    weighted = (raw + np.uint64(1)) * _WEIGHTS[position % len(_WEIGHTS)]
    sums = np.zeros(n, dtype=np.uint64)
    nonempty = lengths > 0
    sums[nonempty] = np.add.reduceat(weighted, starts[nonempty])
    sums ^= sums >> np.uint64(33)
    sums *= np.uint64(0xFF51AFD7ED558CCD)
    sums ^= sums >> np.uint64(33)
    return (sums % np.uint64(buckets)).astype(np.int64)


class _Partitions:
    """One side of the join: Arrow IPC files `<side>-<bucket>.arrow` in the scratch folder."""

    def __init__(self, scratch: str, side: str, schema: pa.Schema, buckets: int) -> None:
        self.paths = [os.path.join(scratch, f"{side}-{b:03d}.arrow") for b in range(buckets)]
        self.schema = schema
        self._writers: list[pa.ipc.RecordBatchFileWriter | None] = [None] * buckets
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0  # rows written so far (queued ones not included)

    def append(self, table: pa.Table) -> None:
        """Queue rows; they are hashed and written SLICE_ROWS at a time (callers often hand over
        a few hundred rows per result file)."""
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= SLICE_ROWS:
            self._flush()

    def _flush(self) -> None:
        table = pa.concat_tables(self._pending) if self._pending else self.schema.empty_table()
        self._pending, self._pending_rows = [], 0
        for start in range(0, table.num_rows, SLICE_ROWS):
            part = table.slice(start, SLICE_ROWS).combine_chunks()
            bucket = uri_buckets(part.column("source_uri").chunk(0), len(self.paths))
            order = np.argsort(bucket, kind="stable")
            grouped = part.take(pa.array(order))
            bounds = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=len(self.paths)))])
            for b in np.flatnonzero(np.diff(bounds)):
                writer = self._writers[b]
                if writer is None:
                    writer = self._writers[b] = pa.ipc.new_file(self.paths[b], self.schema)
                writer.write_table(grouped.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])))
            self.rows += part.num_rows

    def close(self) -> None:
        self._flush()
        for writer in self._writers:
            if writer is not None:
                writer.close()

    def read(self, bucket: int) -> pa.Table:
        if self._writers[bucket] is None:
            return self.schema.empty_table()
        with pa.memory_map(self.paths[bucket]) as source:
            return pa.ipc.open_file(source).read_all()


@dataclass
class Decision:
    """What the join decided."""

    todo: pa.StringArray  # inputs (images, videos) without rows that count (in input order, or sorted)
    inputs: int  # distinct inputs
    superseded: dict[int, pa.Array] = field(default_factory=dict)  # file id -> sources whose rows there lost
    retried: dict[int, pa.Array] = field(default_factory=dict)  # file id -> sources with error rows this run replaces

    @property
    def retried_count(self) -> int:
        return sum(len(uris) for uris in self.retried.values())


class AntiJoin:
    """Inputs minus the sources that already have rows that count, streamed through `scratch`."""

    def __init__(self, scratch: str, buckets: int = BUCKETS) -> None:
        self.inputs = _Partitions(scratch, "inputs", INPUT_SCHEMA, buckets)
        self.rows = _Partitions(scratch, "rows", KEY_SCHEMA, buckets)
        self.buckets = buckets
        self._positions = 0  # inputs seen so far: the next one's place in input order

    def add_inputs(self, uris: pa.Array) -> None:
        uris = pc.drop_null(uris.cast(pa.string()))
        uris = uris.filter(pc.greater(pc.utf8_length(uris), 0))
        positions = pa.array(np.arange(self._positions, self._positions + len(uris), dtype=np.int64))
        self._positions += len(uris)
        self.inputs.append(pa.table([uris, positions], schema=INPUT_SCHEMA))

    def add_rows(self, keys: pa.Table) -> None:
        """Row keys of result files (KEY_SCHEMA), `file` numbering the caller's list of files."""
        self.rows.append(keys)

    def decide(self, file_rank: np.ndarray, retry_errors: str, sort_by_uri: bool) -> Decision:
        """`file_rank[file]` orders the files by age (higher = later run): of two files holding rows
        of one source, the later file's rows count. `retry_errors` (none/transient/all) names the
        error rows to try again."""
        self.inputs.close()
        self.rows.close()
        ranks = pa.array(file_rank.astype(np.int64))
        todo_parts: list[pa.Table] = []
        superseded: dict[int, list[pa.Array]] = {}
        retried: dict[int, list[pa.Array]] = {}
        inputs = 0
        for bucket in range(self.buckets):
            rows = self.rows.read(bucket)
            rows = rows.append_column("rank", pc.take(ranks, rows.column("file")))
            latest = rows
            if rows.num_rows:
                best = rows.group_by("source_uri").aggregate([("rank", "max"), ("rank", "count")])
                if pc.max(best.column("rank_count")).as_py() > 1:  # several rows: a video's, or rows in two files
                    joined = rows.join(best.select(["source_uri", "rank_max"]), "source_uri")
                    later = pc.equal(joined.column("rank"), joined.column("rank_max"))
                    _collect(superseded, joined.filter(pc.invert(later)))
                    latest = joined.filter(later)
            # A source counts as done when no row of its latest file is to be tried again: one
            # error row of a video (a damaged clip) sends the whole video back.
            again_sources = pc.unique(latest.filter(_retry_mask(latest, retry_errors)).column("source_uri"))
            sources = latest.column("source_uri")
            done = sources.filter(pc.invert(pc.is_in(sources, value_set=again_sources)))
            wanted = self.inputs.read(bucket).group_by("source_uri").aggregate([("position", "min")])
            inputs += wanted.num_rows
            todo = wanted.filter(pc.invert(pc.is_in(wanted.column("source_uri"), value_set=done.combine_chunks())))
            todo_parts.append(todo)
            if len(again_sources) and todo.num_rows:
                retry = latest.filter(pc.is_in(sources, value_set=again_sources))
                todo_sources = todo.column("source_uri").combine_chunks()
                wanted_again = pc.is_in(retry.column("source_uri"), value_set=todo_sources)
                _collect(retried, retry.filter(wanted_again))
        todo = pa.concat_tables(todo_parts) if todo_parts else INPUT_SCHEMA.empty_table()
        todo = todo.sort_by("source_uri" if sort_by_uri else "position_min") if todo.num_rows else todo
        return Decision(
            todo.column("source_uri").combine_chunks() if todo.num_rows else pa.array([], pa.string()),
            inputs,
            {f: pa.concat_arrays(parts) for f, parts in superseded.items()},
            {f: pa.concat_arrays(parts) for f, parts in retried.items()},
        )


def _retry_mask(rows: pa.Table, retry_errors: str) -> pa.ChunkedArray | pa.Array:
    is_error = rows.column("is_error")
    if retry_errors == "all":
        return is_error
    if retry_errors == TRANSIENT:
        return pc.and_(is_error, pc.fill_null(pc.equal(rows.column("error_kind"), TRANSIENT), False))
    return pc.and_(is_error, False)


def _collect(into: dict[int, list[pa.Array]], rows: pa.Table) -> None:
    """Group these rows' sources by file (a video's once, however many rows it has there)."""
    for file in pc.unique(rows.column("file")).to_pylist():
        mine = rows.filter(pc.equal(rows.column("file"), file))
        into.setdefault(file, []).append(pc.unique(mine.column("source_uri").combine_chunks()))
