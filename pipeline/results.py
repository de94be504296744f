"""The labeling output folder as readers see it: Parquet result files (one row per input) beside
files and folders named `_*` (run manifest, previews, input lists), which are not results, as
pyarrow's and Ray Data's readers also assume."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import pyarrow.parquet as pq

MANIFEST_NAME = "_manifest.json"
PREVIEW_DIR = "_previews"
# The labeling job's own result files are known by name: it writes `labels-<write id>_<task>.parquet`
# (the previous release let Ray Data name them `<dataset id>_<write id>_<task>-<n>.parquet`). The
# job never deletes or rewrites any other file under its output.
RESULT_PREFIX = "labels-"
_PREVIOUS_RELEASE_NAME = re.compile(r"^[0-9A-Za-z]+_[0-9a-f]{32}_\d{6}(-\d+)?\.parquet$")


def result_file_name(write_uuid: str, task_index: int) -> str:
    return f"{RESULT_PREFIX}{write_uuid}_{task_index:06d}.parquet"


def is_own_result(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return (name.startswith(RESULT_PREFIX) and name.endswith(".parquet")) or bool(_PREVIOUS_RELEASE_NAME.match(name))


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
    """Every row of a labeling output, file by file (the job's own files only)."""
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    for path in filter(is_own_result, result_files(fs, root)):
        with fs.open(path, "rb") as f:
            yield from pq.read_table(f).to_pylist()
