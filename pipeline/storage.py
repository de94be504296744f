"""URIs and filesystems, shared by every job: fsspec for listing and reading, pyarrow views of it
for Ray Data's Parquet reader and writer."""

from __future__ import annotations

from collections.abc import Sequence
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


def read_parquet(file: BinaryIO, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file from an open Python file object, read within this call.

    `pq.read_table` reads a Python file through the dataset scanner, whose background threads can
    drop the last reference to the file after the call has returned; when that happens while the
    interpreter exits, the thread cannot take the GIL and the process aborts (`san demo` did, in
    about one run in five). `ParquetFile` reads the file directly and is done with it on return.
    """
    with pq.ParquetFile(file) as parquet:
        return parquet.read(columns=list(columns) if columns is not None else None)
