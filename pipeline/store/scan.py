"""What a labeling output already holds, and keeping it at exactly one row per image.

Every result file records in its metadata the run that wrote it (run ids sort by start time).
When two of the job's own files hold a row for the same image, the later run's row counts and
the earlier one is superseded: that happens when `--retry-errors` labels an image again, or when
a run was killed while it tidied up. `drop_superseded` rewrites each file that holds superseded
rows without them (a new file of the job's own, then the old one removed), so that once a run has
finished, any plain Parquet reader of the folder sees exactly one row per image.

The row keys come from the runs' row indexes where they cover a file, and from the file itself
where none does (a killed run's files, an earlier release's, or files whose bytes are not the
ones indexed), read in parallel.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.output import RUN_ID_KEY, Provenance

from ..storage import read_parquet
from .join import AntiJoin
from .layout import is_own_result, result_file_name, result_file_stamps, source_uris
from .row_index import IndexBuilder, ResultFile, index_path, list_indexes, read_keys_parallel
from .staging import staged_file

log = logging.getLogger(__name__)


@dataclass
class OutputState:
    """The job's own result files under an output (numbered as the join numbers them), read
    without changing anything."""

    root: str
    paths: list[str]  # numbered as the join numbers them
    files: list[ResultFile | None]  # per path; None: a file a killed run left half-written
    unindexed: IndexBuilder | None = None  # keys of the files no index covered, to be indexed
    damaged_indexes: list[str] = field(default_factory=list)
    stale_indexes: list[str] = field(default_factory=list)  # indexes none of whose files exist

    @property
    def complete(self) -> list[ResultFile]:
        return [f for f in self.files if f is not None]

    @property
    def incomplete(self) -> list[str]:
        return [p for p, f in zip(self.paths, self.files, strict=True) if f is None]

    @property
    def provenances(self) -> dict[str, Provenance | None]:
        """Provenance per distinct recording, with one file that records it (each file is checked,
        each distinct recording parsed once)."""
        seen: dict[str | None, str] = {}
        for f in self.complete:
            seen.setdefault(f.provenance_json, f.path)
        return {path: Provenance.model_validate_json(raw) if raw else None for raw, path in seen.items()}

    def file_rank(self) -> np.ndarray:
        """Per file number, its place in write order (run id, then path); later rows count."""
        runs = [f.run_id if f is not None else "" for f in self.files]
        order = sorted(range(len(self.files)), key=lambda i: (runs[i], self.paths[i]))
        rank = np.empty(len(self.files), dtype=np.int64)
        rank[order] = np.arange(len(self.files))
        return rank


def scan_output(fs: fsspec.AbstractFileSystem, root: str, join: AntiJoin, scratch: str) -> OutputState:
    """Feed the keys of every row of the job's own result files (known by name) to `join`, from
    the row indexes where they cover a file and from the file where none does. Any other file is
    ignored. A file that cannot be read at all (an outage, no permission) stops the job: a read
    error proves nothing about the file."""
    stamps = {}
    for path, stamp in result_file_stamps(fs, root).items():
        if is_own_result(path):
            stamps[path] = stamp
        else:
            log.warning("ignoring %s: not written by the labeling job (left as it is)", path)
    paths = list(stamps)
    prefix = root.rstrip("/") + "/"
    number = {p.removeprefix(prefix): i for i, p in enumerate(paths)}
    files: list[ResultFile | None] = [None] * len(paths)
    covered = np.zeros(len(paths), dtype=bool)
    indexes, damaged = list_indexes(fs, root)
    state = OutputState(root, paths, files, damaged_indexes=damaged)
    for index in indexes:
        # local file number -> this folder's file number; -1 for files gone or already covered
        to_global = np.full(len(index.files), -1, dtype=np.int32)
        for local, entry in enumerate(index.files):
            i = number.get(entry.path)
            if i is not None and not covered[i] and entry.stamp == stamps[paths[i]]:
                covered[i] = True
                files[i] = ResultFile(paths[i], entry.run_id, entry.provenance_json, entry.stamp)
                to_global[local] = i
        if not (to_global >= 0).any():
            state.stale_indexes.append(index.path)
            continue
        mapping = pa.array(to_global)
        for batch in index.batches(fs):
            keys = pa.Table.from_batches([batch])
            file = pc.take(mapping, keys.column("file"))
            keys = keys.set_column(0, "file", file).filter(pc.greater_equal(file, 0))
            join.add_rows(keys.replace_schema_metadata(None))
    todo = {paths[i]: stamps[paths[i]] for i in np.flatnonzero(~covered)}
    if todo:
        state.unindexed = IndexBuilder(os.path.join(scratch, "unindexed-keys.arrow"))
        for path, read in read_keys_parallel(fs, todo):
            if read is None:  # read, and not Parquet: the file a killed writer left
                continue
            result, keys = read
            i = number[path.removeprefix(prefix)]
            files[i] = result
            state.unindexed.add(result, keys)
            join.add_rows(keys.set_column(0, "file", pa.array([i] * keys.num_rows, pa.int32())))
    return state


def drop_superseded(
    fs: fsspec.AbstractFileSystem, superseded: dict[str, pa.Array], run_id: str
) -> dict[str, str | None]:
    """Rewrite every file holding superseded rows (path -> their sources) without them, or remove
    it if none is left; returns each such path's copy (None where none was needed). The copy is a
    new file of the job's own, written before the old one is removed: a kill in between leaves
    duplicates that the next plan resolves the same way."""
    copies: dict[str, str | None] = {}
    for path in sorted(superseded):
        with fs.open(path, "rb") as f:
            table = read_parquet(f)
        kept = table.filter(pc.invert(pc.is_in(source_uris(table), value_set=superseded[path])))
        copies[path] = None
        if kept.num_rows:
            metadata = dict(table.schema.metadata or {})
            metadata[RUN_ID_KEY.encode()] = run_id.encode()
            copy = f"{path.rsplit('/', 1)[0]}/{result_file_name(uuid.uuid4().hex, 0)}"
            with staged_file(fs, copy) as f:
                pq.write_table(kept.replace_schema_metadata(metadata), f)
            copies[path] = copy
        fs.rm(path)
        log.info("%s: %d superseded rows dropped, %d kept", path, table.num_rows - kept.num_rows, kept.num_rows)
    return copies


@dataclass
class NewRows:
    labeled: int
    failed: int
    replaced: dict[str, pa.Array]  # earlier file -> sources whose error rows this run replaced


def index_new_files(
    fs: fsspec.AbstractFileSystem,
    root: str,
    stamps: dict[str, str],
    run_id: str,
    scratch: str,
    retried: dict[str, pa.Array],
) -> NewRows:
    """Read the keys of the files this run wrote (in parallel), count them, write the run's row
    index, and find the earlier error rows that this run's rows replace."""
    index = IndexBuilder(os.path.join(scratch, "new-keys.arrow"))
    labeled = failed = 0
    retried_uris = pa.concat_arrays(list(retried.values())) if retried else pa.array([], pa.string())
    written: list[pa.Array] = []
    for _, read in read_keys_parallel(fs, stamps):
        if read is None:
            continue
        result, keys = read
        index.add(result, keys)
        errors = pc.sum(keys.column("is_error").cast(pa.int64())).as_py() or 0
        failed += errors
        labeled += keys.num_rows - errors
        if len(retried_uris):
            uris = keys.column("source_uri")
            written.append(uris.filter(pc.is_in(uris, value_set=retried_uris)).combine_chunks())
    if index.files:
        index.write(fs, root, index_path(root, run_id))
    replaced: dict[str, pa.Array] = {}
    if written:
        done = pa.concat_arrays(written)
        for path, uris in retried.items():
            mine = uris.filter(pc.is_in(uris, value_set=done))
            if len(mine):
                replaced[path] = mine
    return NewRows(labeled, failed, replaced)
