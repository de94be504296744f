"""What a labeling output already holds, and keeping it at exactly one row per image.

Every result file records in its metadata the run that wrote it (run ids sort by start time).
When two of the job's own files hold a row for the same image, the later run's row counts and
the earlier one is superseded: that happens when `--retry-errors` labels an image again, or when
a run was killed while it tidied up. `drop_superseded` rewrites each file that holds superseded
rows without them (a new file of the job's own, then the old one removed), so that once a run has
finished, any plain Parquet reader of the folder sees exactly one row per image.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.output import RUN_ID_KEY, Provenance

from ..inputs import InputError
from ..results import is_own_result, result_file_name, result_files
from ..retries import TRANSIENT

log = logging.getLogger(__name__)


@dataclass
class LatestRow:
    """The row of one image that counts: where it is and whether it is an error (of which kind)."""

    run_id: str
    path: str
    error_kind: str | None  # "transient" / "permanent"; "" for an error row of a previous release
    is_error: bool


@dataclass
class ResultScan:
    """What an output folder already holds, read without changing anything."""

    latest: dict[str, LatestRow] = field(default_factory=dict)  # image URI -> the row that counts
    provenances: dict[str, Provenance | None] = field(default_factory=dict)  # per own complete file
    incomplete: list[str] = field(default_factory=list)  # own files a killed run left half-written
    superseded: dict[str, int] = field(default_factory=dict)  # own file -> rows that no longer count

    @property
    def files(self) -> list[str]:
        return list(self.provenances)

    def done(self, retry_errors: str = "none") -> set[str]:
        """Images that need no new attempt: a row, and not an error that `retry_errors` re-attempts."""
        return {uri for uri, row in self.latest.items() if not (row.is_error and _retried(row, retry_errors))}


def _retried(row: LatestRow, retry_errors: str) -> bool:
    return retry_errors == "all" or (retry_errors == TRANSIENT and row.error_kind == TRANSIENT)


def scan_results(fs: fsspec.AbstractFileSystem, root: str) -> ResultScan:
    """The job's own result files (known by name), the row of each image that counts, and the
    rows that no longer do. A file whose bytes are not a complete Parquet file was left
    half-written by a killed run. Any other file is ignored. A file that cannot be read at all (an
    outage, no permission) stops the job: a read error proves nothing about the file."""
    scan = ResultScan()
    for path in result_files(fs, root):
        if not is_own_result(path):
            log.warning("ignoring %s: not written by the labeling job (left as it is)", path)
            continue
        try:
            with fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                schema = parquet.schema_arrow
                columns = ["image_uri", "error"] + (["error_kind"] if "error_kind" in schema.names else [])
                table = parquet.read(columns=columns)
        except pa.ArrowInvalid:  # read, and not Parquet: the file a killed writer left
            scan.incomplete.append(path)
            continue
        except Exception as e:
            raise InputError(f"cannot read the earlier result {path}: {type(e).__name__}: {e}") from e
        scan.provenances[path] = Provenance.from_schema(schema)
        run_id = (schema.metadata or {}).get(RUN_ID_KEY.encode(), b"").decode()  # "" sorts first
        errors = table.column("error").is_valid().to_pylist()
        kinds = table.column("error_kind").to_pylist() if "error_kind" in columns else [""] * table.num_rows
        for uri, is_error, kind in zip(table.column("image_uri").to_pylist(), errors, kinds, strict=True):
            row = LatestRow(run_id, path, kind if is_error else None, is_error)
            earlier = scan.latest.get(uri)
            if earlier is None:
                scan.latest[uri] = row
                continue
            loser = earlier if (earlier.run_id, earlier.path) < (run_id, path) else row
            scan.superseded[loser.path] = scan.superseded.get(loser.path, 0) + 1
            if loser is earlier:
                scan.latest[uri] = row
    return scan


def drop_superseded(fs: fsspec.AbstractFileSystem, scan: ResultScan, run_id: str) -> int:
    """Rewrite every file holding superseded rows without them (or remove it if none is left);
    returns the rows dropped. The copy is a new file of the job's own, written before the old
    one is removed: a kill in between leaves duplicates that the next scan resolves the same way."""
    dropped = 0
    for path in sorted(scan.superseded):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        keep = pa.array([scan.latest[uri].path == path for uri in table.column("image_uri").to_pylist()])
        kept = table.filter(keep)
        if kept.num_rows:
            metadata = dict(table.schema.metadata or {})
            metadata[RUN_ID_KEY.encode()] = run_id.encode()
            copy = f"{path.rsplit('/', 1)[0]}/{result_file_name(uuid.uuid4().hex, 0)}"
            with fs.open(copy, "wb") as f:
                pq.write_table(kept.replace_schema_metadata(metadata), f)
            for uri in kept.column("image_uri").to_pylist():
                scan.latest[uri].path = copy
        fs.rm(path)
        dropped += table.num_rows - kept.num_rows
        log.info("%s: %d superseded rows dropped, %d kept", path, table.num_rows - kept.num_rows, kept.num_rows)
    scan.superseded.clear()
    return dropped


def count_rows(fs: fsspec.AbstractFileSystem, paths: list[str]) -> tuple[int, int]:
    """(rows without error, error rows) in these files."""
    ok = failed = 0
    for path in paths:
        with fs.open(path, "rb") as f:
            errors = pq.read_table(f, columns=["error"]).column("error")
        ok += errors.null_count
        failed += len(errors) - errors.null_count
    return ok, failed
