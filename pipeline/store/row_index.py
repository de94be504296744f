"""The keys of a labeling output's rows, read fast: which image each row is for, whether it is an
error (and of which kind), in which result file, written by which run.

Every run writes one index of the keys of the files it wrote, `_row_index/<run id>.arrow` (Arrow
IPC). The `_` folder and the extension keep it out of every plain Parquet reader's view. The
result files stay the source of truth: an index entry counts only while the file it names exists,
and result files are never changed in place (a rewrite is a new file under a new name). So a lost,
stale or damaged index costs a read of the files it covered, never a wrong answer, and planning
reads one object per run instead of one per result file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import pyarrow as pa

from schemas.output import PROVENANCE_KEY, RUN_ID_KEY, Provenance

from ..inputs import InputError
from ..storage import ParquetReader
from .layout import INDEX_DIR, source_uris

log = logging.getLogger(__name__)

INDEX_SUFFIX = ".arrow"
# JSON {"provenances": [...], "files": [{"name", "run_id", "provenance" (a number in that list), "stamp"}]}
_FILES_KEY = b"san_labeler.row_index.files"
INDEX_BATCH_ROWS = 1 << 16
READ_THREADS = 32  # result files read at once: on object storage each read is a round trip
# One row per result row; `file` numbers the files listed in the index's metadata, `source_uri` is
# the input the row came from (the image, or the video of a frame).
KEY_SCHEMA = pa.schema(
    [("file", pa.int32()), ("source_uri", pa.string()), ("is_error", pa.bool_()), ("error_kind", pa.string())]
)


@dataclass(frozen=True)
class ResultFile:
    """A complete result file and what made it."""

    path: str
    run_id: str  # "" for files of a release that did not record it (sorts first)
    provenance_json: str | None  # None for files of a release that did not record it
    stamp: str  # from the listing: size and ETag or modification time (an index entry of other bytes is void)

    @property
    def provenance(self) -> Provenance | None:
        return Provenance.model_validate_json(self.provenance_json) if self.provenance_json else None


def read_keys(fs: fsspec.AbstractFileSystem, path: str, stamp: str) -> tuple[ResultFile, pa.Table] | None:
    """A result file's row keys (KEY_SCHEMA, `file` = 0), or None if its bytes are not a complete
    Parquet file (what a killed writer leaves). Any other failure raises InputError: a read error
    proves nothing about the file."""
    try:
        with fs.open(path, "rb") as f, ParquetReader(f) as parquet:
            schema = parquet.schema_arrow
            optional = [name for name in ("error_kind", "video_uri") if name in schema.names]
            columns = ["image_uri", "error", *optional]
            table = parquet.read(columns)
    except pa.ArrowInvalid:
        return None
    except Exception as e:
        raise InputError(f"cannot read the earlier result {path}: {type(e).__name__}: {e}") from e
    metadata = schema.metadata or {}
    raw = metadata.get(PROVENANCE_KEY.encode())
    result = ResultFile(path, metadata.get(RUN_ID_KEY.encode(), b"").decode(), raw.decode() if raw else None, stamp)
    n = table.num_rows
    kinds = table.column("error_kind") if "error_kind" in columns else pa.nulls(n, pa.string())
    keys = pa.table(
        [pa.array([0] * n, pa.int32()), source_uris(table), table.column("error").is_valid(), kinds],
        schema=KEY_SCHEMA,
    )
    return result, keys


def read_keys_parallel(
    fs: fsspec.AbstractFileSystem, stamps: dict[str, str], threads: int = READ_THREADS
) -> Iterator[tuple[str, tuple[ResultFile, pa.Table] | None]]:
    """`read_keys` of each file (path -> stamp), in order, with up to `threads` reads in flight
    (a bounded window, so memory does not grow with the number of files)."""
    paths = list(stamps)
    window = max(1, threads) * 2
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(paths), window):
            chunk = paths[start : start + window]
            yield from zip(chunk, pool.map(lambda p: read_keys(fs, p, stamps[p]), chunk), strict=True)


def index_path(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{INDEX_DIR}/{name}{INDEX_SUFFIX}"


class IndexBuilder:
    """Collects the keys of result files in a local scratch file, then writes them as one index.
    The index lists its files in its schema, which comes first in the file, so the keys wait on
    local disk until the list is known."""

    def __init__(self, scratch_path: str) -> None:
        self.files: list[ResultFile] = []
        self._scratch = scratch_path
        self._writer = pa.ipc.new_file(scratch_path, KEY_SCHEMA)

    def add(self, result: ResultFile, keys: pa.Table) -> None:
        number = pa.array([len(self.files)] * keys.num_rows, pa.int32())
        self._writer.write_table(keys.set_column(0, "file", number))
        self.files.append(result)

    def write(self, fs: fsspec.AbstractFileSystem, root: str, target: str) -> None:
        """Write the index to `target`, in one stream: on object storage the object appears whole
        or not at all; a local file cut short fails to open and is ignored (and removed) by the
        next reader."""
        self._writer.close()
        prefix = root.rstrip("/") + "/"
        provenances = list(dict.fromkeys(f.provenance_json for f in self.files))  # one per run, in practice
        number = {raw: i for i, raw in enumerate(provenances)}
        listed = {
            "provenances": provenances,
            "files": [
                {"name": f.path.removeprefix(prefix), "run_id": f.run_id, "provenance": number[f.provenance_json],
                 "stamp": f.stamp}
                for f in self.files
            ],
        }  # fmt: skip
        schema = KEY_SCHEMA.with_metadata({_FILES_KEY: json.dumps(listed).encode()})
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with pa.memory_map(self._scratch) as source, fs.open(target, "wb") as sink:
            reader = pa.ipc.open_file(source)
            with pa.ipc.new_file(sink, schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
                batches: list[pa.RecordBatch] = []  # a file's few hundred rows each: written in larger batches
                rows = 0
                for i in range(reader.num_record_batches):
                    batches.append(reader.get_batch(i))
                    rows += batches[-1].num_rows
                    if rows >= INDEX_BATCH_ROWS or i == reader.num_record_batches - 1:
                        merged = pa.Table.from_batches(batches).combine_chunks()  # one record batch, not one per file
                        writer.write_table(merged.replace_schema_metadata(schema.metadata))
                        batches, rows = [], 0


@dataclass
class RowIndex:
    """One index file: the result files it covers, by name, in the order its `file` column numbers."""

    path: str
    files: list[ResultFile]  # each `path` relative to the output folder

    def batches(self, fs: fsspec.AbstractFileSystem) -> Iterator[pa.RecordBatch]:
        with fs.open(self.path, "rb") as f:
            reader = pa.ipc.open_file(f)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)


def list_indexes(fs: fsspec.AbstractFileSystem, root: str) -> tuple[list[RowIndex], list[str]]:
    """The readable indexes under an output, and the paths of damaged ones (a writer killed on a
    local file system), which cover nothing."""
    folder = f"{root.rstrip('/')}/{INDEX_DIR}"
    if not fs.exists(folder):
        return [], []
    indexes: list[RowIndex] = []
    damaged: list[str] = []
    for path in sorted(p for p in fs.find(folder) if p.endswith(INDEX_SUFFIX)):
        try:
            with fs.open(path, "rb") as f:
                metadata = pa.ipc.open_file(f).schema.metadata or {}
            listed = json.loads(metadata[_FILES_KEY])
            provenances = listed["provenances"]
            files = [
                ResultFile(e["name"], e["run_id"], provenances[e["provenance"]], e["stamp"]) for e in listed["files"]
            ]
        except (pa.ArrowInvalid, IndexError, KeyError, TypeError, ValueError):
            damaged.append(path)
            continue
        except Exception as e:
            raise InputError(f"cannot read the row index {path}: {type(e).__name__}: {e}") from e
        indexes.append(RowIndex(path, files))
    return indexes, damaged
