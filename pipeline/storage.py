"""Small storage helpers shared by the jobs."""

from __future__ import annotations

import fsspec
import pyarrow.fs as pafs


def pyarrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """The pyarrow view of an fsspec filesystem, for Ray Data's Parquet reader and writer."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
