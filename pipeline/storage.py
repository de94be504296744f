"""URIs and filesystems, shared by every job: fsspec for listing and reading, pyarrow views of it
for Ray Data's Parquet reader and writer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import BinaryIO

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def with_protocol(path: str, like: str) -> str:
    """fsspec lists paths without their protocol; give `path` the protocol of the URI `like`."""
    if "://" not in like or like.startswith("file://"):
        return path
    return f"{like.split('://', 1)[0]}://{path}"


def is_local(uri: str) -> bool:
    """A path on this machine's own file system (no protocol, or file://)."""
    return "://" not in uri or uri.startswith(("file://", "local://"))


def pyarrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """The pyarrow view of an fsspec filesystem, for Ray Data's Parquet reader and writer."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


class ParquetReader:
    """A Parquet file in an open Python file object, read on the calling thread alone.

    Arrow wraps a Python file so that each read takes the GIL, and the bytes it returns stay
    Python objects whose release takes the GIL too. An Arrow thread that touches them can still be
    doing so after a read has returned; if the interpreter is exiting by then, that thread cannot
    take the GIL and the process aborts ("terminate called without an active exception").
    `pq.read_table` aborted that way in about one run in two here, and `pq.ParquetFile` with its
    defaults once in a CI run: it pre-buffers on Arrow's I/O threads and decodes columns on its CPU
    threads. This reader does neither, so every read is finished when it returns.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._parquet = pq.ParquetFile(file, pre_buffer=False)

    def __enter__(self) -> ParquetReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._parquet.close()

    @property
    def schema(self) -> pq.ParquetSchema:
        return self._parquet.schema

    @property
    def schema_arrow(self) -> pa.Schema:
        return self._parquet.schema_arrow

    @property
    def metadata(self) -> pq.FileMetaData:
        return self._parquet.metadata

    @property
    def num_row_groups(self) -> int:
        return self._parquet.num_row_groups

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        return self._parquet.read(columns=_names(columns), use_threads=False)

    def read_row_group(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        return self._parquet.read_row_group(index, columns=_names(columns), use_threads=False)

    def iter_batches(self, batch_size: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        return self._parquet.iter_batches(batch_size=batch_size, columns=_names(columns), use_threads=False)


def _names(columns: Sequence[str] | None) -> list[str] | None:
    return list(columns) if columns is not None else None


def read_parquet(file: BinaryIO, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file from an open Python file object, read on the calling thread (ParquetReader)."""
    with ParquetReader(file) as parquet:
        return parquet.read(columns)
