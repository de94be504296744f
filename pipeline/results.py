"""The labeling output folder as readers see it: Parquet result files (one row per input) beside
files and folders named `_*` (run manifest, previews, input lists), which are not results, as
pyarrow's and Ray Data's readers also assume."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import pyarrow.parquet as pq

MANIFEST_NAME = "_manifest.json"
PREVIEW_DIR = "_previews"


def result_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """The Parquet result files under a labeling output, sorted."""
    if not fs.exists(root):
        return []
    prefix = root.rstrip("/")
    return sorted(
        path
        for path in fs.find(root)
        if path.endswith(".parquet") and not any(part.startswith("_") for part in path[len(prefix) :].split("/"))
    )


def read_output_rows(output: str, storage_options: Mapping[str, Any] | None = None) -> Iterable[dict]:
    """Every row of a labeling output, file by file."""
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    for path in result_files(fs, root):
        with fs.open(path, "rb") as f:
            yield from pq.read_table(f).to_pylist()
