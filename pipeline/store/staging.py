"""Result files appear under their final name only when complete.

Every result file is written under `_staging/` in the labels folder (which no reader looks in:
pyarrow, DuckDB's `OUT/*.parquet`, Ray Data and the store all pass over `_` names) and moved to
its name once its last byte is written: a rename on local disk, a server-side copy on S3 (an
object appears whole or not at all). A write cut short by a full disk, an outage or a kill
leaves at most a file in `_staging/`, which the next run's plan removes.

`staged_file` does it for the files the driver and the video actors write; `StagedWrites` for
Ray Data's Parquet writer, as the pyarrow filesystem it writes through. Its output streams publish
a file only if it ends with Parquet's closing magic bytes, which a writer puts last.

No PyTorch (or Ray) here: Ray Data's write tasks unpickle `StagedWrites`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"
PARQUET_MAGIC = b"PAR1"  # a Parquet file's first and last four bytes


def staging_path(final: str) -> str:
    """Where a file bound for `final` is written first: the `_staging/` folder beside it."""
    folder, name = final.rsplit("/", 1)
    return f"{folder}/{STAGING_DIR}/{uuid.uuid4().hex[:12]}-{name}"


@contextlib.contextmanager
def staged_file(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[BinaryIO]:
    """Open `path` for writing; the bytes reach `path` only if the block completes."""
    staging = staging_path(path)
    fs.makedirs(staging.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(staging, "wb") as f:
            yield f
    except BaseException:
        with contextlib.suppress(Exception):  # the block's own error is the one to report
            fs.rm_file(staging)
        raise
    fs.mv(staging, path)


class _StagedOutput:
    """A pyarrow output stream's Python side: writes to a staging file, moves it to its name on
    close if it is a whole Parquet file, removes it otherwise."""

    def __init__(self, inner: pafs.FileSystem, path: str, metadata: Any) -> None:
        self.inner, self.path = inner, path
        self.staging = staging_path(path)
        inner.create_dir(self.staging.rsplit("/", 1)[0], recursive=True)
        self.stream = inner.open_output_stream(self.staging, metadata=metadata)
        self.head = b""
        self.tail = b""
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        written = self.stream.write(view)
        if self.size < 4:
            self.head = (self.head + bytes(view[:4]))[:4]
        self.tail = (self.tail + bytes(view[-4:]))[-4:]
        self.size += len(view)
        return written

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.stream.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        whole = False
        try:
            self.stream.close()
            whole = self.size >= 8 and self.head == PARQUET_MAGIC and self.tail == PARQUET_MAGIC
        finally:
            if whole:
                self.inner.move(self.staging, self.path)
            else:
                log.warning("%s was not written whole (%d bytes); not published", self.path, self.size)
                with contextlib.suppress(Exception):
                    self.inner.delete_file(self.staging)


class StagedWrites(pafs.FileSystemHandler):
    """A pyarrow filesystem (`pafs.PyFileSystem(StagedWrites(fs))`) that is `inner` in every
    way but one: a file opened for output reaches its name only when written whole."""

    def __init__(self, inner: pafs.FileSystem) -> None:
        self.inner = inner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StagedWrites) and self.inner.equals(other.inner)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return f"staged+{self.inner.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.inner.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.inner.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.inner.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.inner.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.inner.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.inner.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.inner.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.inner.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_StagedOutput(self.inner, path, metadata), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self.inner.open_append_stream(path, metadata=metadata)
