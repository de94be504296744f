"""`LabelStore`: a labels folder, through the one API that lists, reads and writes it.

store = LabelStore("s3://bucket/labels", storage_options)
with store.lease(run_id, seconds=120) as lease:          # one run at a time
    with store.planner() as planner:                     # plan: what is left to label
        for batch in input_batches:
            planner.add_inputs(batch)
        plan = planner.plan(provenance, run_id, retry_errors, sort_by_uri=True)
    store.write_dataset(dataset, schema, rows_per_file)  # commit: the stream's rows,
    lease.check()                                        # (still ours?)
    committed = store.commit(plan, finished_videos)      # then index, supersede
    store.write_manifest(manifest)                       # last: the run is finished
for row in store.rows(["image_uri", "segments"]):     # read, for every reader
    ...
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.output import Provenance
from schemas.taxonomy import Taxonomy

from ..storage import ParquetReader, pyarrow_filesystem, read_parquet
from .layout import (
    MANIFEST_NAME,
    PREVIEW_DIR,
    ResultFileNames,
    is_own_result,
    is_video_result,
    own_result_files,
    result_file_stamps,
    video_result_file_name,
)
from .lease import Lease
from .plan import Planner, ProvenanceError, StorePlan
from .scan import drop_superseded, index_new_files
from .staging import STAGING_DIR, StagedWrites, staged_file

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

# Columns to read: names, or a function of a file's Parquet schema that names leaf paths (such as
# segments.list.element.area, so that a reader fetches some fields of a nested column alone).
Columns = Sequence[str] | Callable[[pq.ParquetSchema], list[str]] | None


@dataclass
class Committed:
    """What a run's commit found this run wrote."""

    labeled: int  # rows without error
    failed: int  # error rows
    files: list[str]  # the folder's result files after the commit


class LabelStore:
    """A labels folder: the job's own `labels-*.parquet` result files (one row per input; of two
    rows for one input, the later run's counts until the earlier is dropped), `_row_index/` (the
    rows' keys per run), `_previews/` and `_manifest.json` (written last by a finished run).
    Anyone else's files in the folder are never read, changed or removed."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(url, **self.storage_options)
        self.root = root.rstrip("/")

    # -- read

    def files(self) -> list[str]:
        """The result files, sorted (listed afresh: another process may have written since)."""
        return own_result_files(self.fs, self.root)

    def tables(self, columns: Columns = None) -> Iterator[tuple[str, pa.Table]]:
        """Each result file's rows, as (path, table), file by file."""
        for path in self.files():
            yield path, self.read_file(path, columns)

    def read_file(self, path: str, columns: Columns = None) -> pa.Table:
        with self.fs.open(path, "rb") as f:
            if callable(columns):
                with ParquetReader(f) as parquet:
                    return parquet.read(columns(parquet.schema))
            return read_parquet(f, columns)

    def rows(self, columns: Columns = None) -> Iterator[dict[str, Any]]:
        """Every row, as a dict, file by file."""
        for _, table in self.tables(columns):
            yield from table.to_pylist()

    def take(self, path: str, indices: Sequence[int], columns: Sequence[str]) -> pa.Table:
        """Rows of one result file by their number in it, reading only the row groups that hold
        them (and of those, only `columns`)."""
        ordered = sorted(set(indices))
        parts: list[pa.Table] = []
        with self.fs.open(path, "rb") as f, ParquetReader(f) as parquet:
            start = 0
            for group in range(parquet.num_row_groups):
                end = start + parquet.metadata.row_group(group).num_rows
                wanted = [index - start for index in ordered if start <= index < end]
                if wanted:
                    parts.append(parquet.read_row_group(group, columns).take(wanted))
                start = end
        return pa.concat_tables(parts) if parts else pa.table({c: pa.array([]) for c in columns})

    def provenance(self) -> Provenance | None:
        """What made the labels, from the first result file's metadata (None if unrecorded)."""
        for path in self.files():
            with self.fs.open(path, "rb") as f:
                return Provenance.from_schema(pq.read_schema(f))
        return None

    def check_taxonomy(self, taxonomy: Taxonomy) -> None:
        """Raise ProvenanceError unless the labels were made with this taxonomy: its class names and
        ids are what a reader of the output writes down."""
        recorded = self.provenance()
        if recorded is not None and recorded.taxonomy.digest != taxonomy.digest():
            raise ProvenanceError(
                f"{self.url} was labeled with taxonomy {recorded.taxonomy.name} v{recorded.taxonomy.version} "
                f"({recorded.taxonomy.digest[:12]}), not {taxonomy.name} v{taxonomy.version} "
                f"({taxonomy.digest()[:12]}): its class ids would get the wrong names. Pass the taxonomy the "
                "labels were made with."
            )

    def manifest(self) -> dict[str, Any] | None:
        """The last finished run's manifest (None while a run is unfinished, or before any)."""
        path = f"{self.root}/{MANIFEST_NAME}"
        return json.loads(self.fs.cat(path)) if self.fs.exists(path) else None

    def dataset(self, columns: Sequence[str]) -> ray.data.Dataset:
        """The result files as a Ray dataset of `columns` (pushed down into the read)."""
        import ray

        files = self.files()
        # select_columns right after the read: Ray Data pushes it down into the Parquet read
        return ray.data.read_parquet(files, filesystem=pyarrow_filesystem(self.fs)).select_columns(list(columns))

    # -- plan

    def lease(self, run_id: str, seconds: float) -> Lease:
        """One run at a time: `with store.lease(run_id, seconds):` around planning and committing
        (OutputBusy when another run holds the folder; see `lease`)."""
        return Lease(self.fs, self.root, self.url, run_id, seconds)

    def planner(self) -> Planner:
        return Planner(self.fs, self.root, self.url)

    # -- commit

    def write_dataset(self, dataset: ray.data.Dataset, schema: pa.Schema, rows_per_file: int) -> None:
        """Write a Ray dataset's rows as new result files of at least `rows_per_file` rows."""
        dataset.write_parquet(
            self.root,
            # each file reaches its name only when written whole (`staging`)
            filesystem=pafs.PyFileSystem(StagedWrites(pyarrow_filesystem(self.fs))),
            schema=schema,
            filename_provider=ResultFileNames(),
            min_rows_per_file=rows_per_file,
            ray_remote_args={"num_cpus": 0.5},
        )

    @contextlib.contextmanager
    def video_writer(self, schema: pa.Schema) -> Iterator[tuple[str, pq.ParquetWriter]]:
        """A new result file for one video's rows: (its path, a Parquet writer). The commit keeps
        it only if the call that wrote it finished (see `commit`)."""
        path = f"{self.root}/{video_result_file_name(uuid.uuid4().hex)}"
        with staged_file(self.fs, path) as f, pq.ParquetWriter(f, schema) as writer:
            yield path, writer

    def commit(self, plan: StorePlan, finished_videos: set[str]) -> Committed:
        """Account for the files this run wrote: remove a video's file whose actor died mid-video
        (Ray Data labeled that video again into another), index the rest, and drop the earlier
        error rows this run's rows replace (--retry-errors). After it, a plain Parquet reader sees
        one row per input."""
        self.fs.invalidate_cache()
        before = set(plan.files_before)
        stamps = result_file_stamps(self.fs, self.root)
        new_files = {p: stamp for p, stamp in stamps.items() if is_own_result(p) and p not in before}
        for path in [p for p in new_files if is_video_result(p) and p not in finished_videos]:
            log.warning("removing %s, left by a labeling actor that did not finish its video", path)
            self.fs.rm(path)
            del new_files[path]
        staging = f"{self.root}/{STAGING_DIR}"
        if self.fs.exists(staging):  # every writer of the run is done: what is left there was cut short
            for path in self.fs.find(staging):
                log.warning("removing %s, left unfinished by a writer that failed or was killed", path)
            self.fs.rm(staging, recursive=True)
        with tempfile.TemporaryDirectory(prefix="san-index-") as scratch:
            new_rows = index_new_files(self.fs, self.root, new_files, plan.run_id, scratch, plan.retried)
        files = sorted([*plan.files_before, *new_files])
        if new_rows.replaced:  # superseded: gone before the run counts as done
            drop_superseded(self.fs, new_rows.replaced, plan.run_id)
            log.info(f"{sum(len(u) for u in new_rows.replaced.values())} earlier rows replaced by this run's")
            files = self.files()  # rewritten files have new names: list again
        return Committed(new_rows.labeled, new_rows.failed, files)

    def clear_previews(self) -> None:
        if self.fs.exists(f"{self.root}/{PREVIEW_DIR}"):
            self.fs.rm(f"{self.root}/{PREVIEW_DIR}", recursive=True)

    def write_preview(self, number: int, uri: str, extension: str, data: bytes) -> str:
        """`_previews/NNNN_<name of uri>.<extension>`; returns its path."""
        name = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        target = f"{self.root}/{PREVIEW_DIR}/{number:04d}_{name}.{extension}"
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe(target, data)
        return target

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        """Written last: it marks a finished run."""
        self.fs.pipe(f"{self.root}/{MANIFEST_NAME}", json.dumps(manifest, indent=2).encode())
