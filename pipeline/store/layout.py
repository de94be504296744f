"""What a labels folder holds, by name: Parquet result files (one row per input) beside files and
folders named `_*` (run manifest, previews, row indexes), which are not results, as pyarrow's and
Ray Data's readers also assume.

No PyTorch here: Ray Data's write tasks unpickle `ResultFileNames`, and importing it should not
cost them a PyTorch import (seconds of CPU per worker process).
"""

from __future__ import annotations

import re
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from ray.data.datasource import FilenameProvider

MANIFEST_NAME = "_manifest.json"
PREVIEW_DIR = "_previews"
INDEX_DIR = "_row_index"
LEASE_DIR = "_lease"  # the run that holds the folder (`lease`)
# The labeling job's own result files are known by name: it writes `labels-<write id>_<task>.parquet`
# (the previous release let Ray Data name them `<dataset id>_<write id>_<task>-<n>.parquet`). The
# job never deletes or rewrites any other file under its output.
RESULT_PREFIX = "labels-"
VIDEO_RESULT_PREFIX = f"{RESULT_PREFIX}video-"
_PREVIOUS_RELEASE_NAME = re.compile(r"^[0-9A-Za-z]+_[0-9a-f]{32}_\d{6}(-\d+)?\.parquet$")


def source_uris(table: pa.Table) -> pa.ChunkedArray:
    """Per row, the input it came from: the video of a frame's row, else the image. A run is
    incremental over these; all rows of one video are written to one result file."""
    if "video_uri" in table.column_names:
        return pc.coalesce(table.column("video_uri"), table.column("image_uri"))
    return table.column("image_uri")  # files of an output schema before video


def result_file_name(write_uuid: str, task_index: int) -> str:
    return f"{RESULT_PREFIX}{write_uuid}_{task_index:06d}.parquet"


def video_result_file_name(write_uuid: str) -> str:
    """A video's own result file (a labeling actor writes it; all the video's rows are in it)."""
    return f"{VIDEO_RESULT_PREFIX}{write_uuid}.parquet"


def is_video_result(path: str) -> bool:
    return path.rstrip("/").rsplit("/", 1)[-1].startswith(VIDEO_RESULT_PREFIX)


def is_own_result(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return (name.startswith(RESULT_PREFIX) and name.endswith(".parquet")) or bool(_PREVIOUS_RELEASE_NAME.match(name))


def result_file_stamps(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, str]:
    """The Parquet files under a labeling output (the job's own and anyone else's), sorted, each
    with a stamp from the listing that changes whenever the file's bytes do (size and ETag or
    modification time)."""
    if not fs.exists(root):
        return {}
    prefix = root.rstrip("/")
    found = fs.find(root, detail=True)
    return {
        path: _stamp(found[path])
        for path in sorted(found)
        if path.endswith(".parquet") and not any(part.startswith("_") for part in path[len(prefix) :].split("/"))
    }


def own_result_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """The job's own result files, sorted, listed afresh (another process may have written since)."""
    fs.invalidate_cache()
    return [path for path in result_file_stamps(fs, root) if is_own_result(path)]


def _stamp(info: dict[str, Any]) -> str:
    version = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated") if k in info), "")
    return f"{info.get('size')}:{version}"


class ResultFileNames(FilenameProvider):
    """Ray Data's file names for the job's Parquet files (see `result_file_name`)."""

    def __init__(self) -> None:
        super().__init__(file_format="parquet")

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return result_file_name(write_uuid, task_index)
