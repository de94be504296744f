"""URIs and filesystems, shared by every job: fsspec for listing and reading, pyarrow views of it
for Ray Data's Parquet reader and writer."""

from __future__ import annotations

import fsspec
import pyarrow.fs as pafs


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
