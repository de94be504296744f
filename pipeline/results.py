"""The labeling output folder as readers see it: Parquet result files (one row per input) beside
files and folders named `_*` (run manifest, previews, input lists), which are not results, as
pyarrow's and Ray Data's readers also assume."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.output import Provenance
from schemas.taxonomy import Taxonomy

from .storage import read_parquet

MANIFEST_NAME = "_manifest.json"
PREVIEW_DIR = "_previews"
# The labeling job's own result files are known by name: it writes `labels-<write id>_<task>.parquet`
# (the previous release let Ray Data name them `<dataset id>_<write id>_<task>-<n>.parquet`). The
# job never deletes or rewrites any other file under its output.
RESULT_PREFIX = "labels-"
_PREVIOUS_RELEASE_NAME = re.compile(r"^[0-9A-Za-z]+_[0-9a-f]{32}_\d{6}(-\d+)?\.parquet$")


def source_uris(table: pa.Table) -> pa.ChunkedArray:
    """Per row, the input it came from: the video of a frame's row, else the image. A run is
    incremental over these; all rows of one video are written to one result file."""
    if "video_uri" in table.column_names:
        return pc.coalesce(table.column("video_uri"), table.column("image_uri"))
    return table.column("image_uri")  # files of an output schema before video


def result_file_name(write_uuid: str, task_index: int) -> str:
    return f"{RESULT_PREFIX}{write_uuid}_{task_index:06d}.parquet"


VIDEO_RESULT_PREFIX = f"{RESULT_PREFIX}video-"


def video_result_file_name(write_uuid: str) -> str:
    """A video's own result file (a labeling actor writes it; all the video's rows are in it)."""
    return f"{VIDEO_RESULT_PREFIX}{write_uuid}.parquet"


def is_video_result(path: str) -> bool:
    return path.rstrip("/").rsplit("/", 1)[-1].startswith(VIDEO_RESULT_PREFIX)


def is_own_result(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return (name.startswith(RESULT_PREFIX) and name.endswith(".parquet")) or bool(_PREVIOUS_RELEASE_NAME.match(name))


def result_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """The Parquet result files under a labeling output, sorted."""
    return list(result_file_stamps(fs, root))


def result_file_stamps(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, str]:
    """The Parquet result files under a labeling output, sorted, each with a stamp from the
    listing that changes whenever the file's bytes do (size and ETag or modification time)."""
    if not fs.exists(root):
        return {}
    prefix = root.rstrip("/")
    found = fs.find(root, detail=True)
    return {
        path: _stamp(found[path])
        for path in sorted(found)
        if path.endswith(".parquet") and not any(part.startswith("_") for part in path[len(prefix) :].split("/"))
    }


def _stamp(info: dict[str, Any]) -> str:
    version = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated") if k in info), "")
    return f"{info.get('size')}:{version}"


class ProvenanceError(ValueError):
    """Labels made by another model, taxonomy or preprocessing than the command names."""


def read_provenance(output: str, storage_options: Mapping[str, Any] | None = None) -> Provenance | None:
    """What made a labeling output, from its first result file's metadata (None if unrecorded)."""
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    for path in filter(is_own_result, result_files(fs, root)):
        with fs.open(path, "rb") as f:
            return Provenance.from_schema(pq.read_schema(f))
    return None


def check_taxonomy(output: str, taxonomy: Taxonomy, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise ProvenanceError unless the output was labeled with this taxonomy: its class names and
    ids are what a reader of the output writes down."""
    recorded = read_provenance(output, storage_options)
    if recorded is not None and recorded.taxonomy.digest != taxonomy.digest():
        raise ProvenanceError(
            f"{output} was labeled with taxonomy {recorded.taxonomy.name} v{recorded.taxonomy.version} "
            f"({recorded.taxonomy.digest[:12]}), not {taxonomy.name} v{taxonomy.version} ({taxonomy.digest()[:12]}): "
            "its class ids would get the wrong names. Pass the taxonomy the labels were made with."
        )


def read_output_rows(output: str, storage_options: Mapping[str, Any] | None = None) -> Iterable[dict]:
    """Every row of a labeling output, file by file (the job's own files only)."""
    fs, root = fsspec.core.url_to_fs(output, **(storage_options or {}))
    for path in filter(is_own_result, result_files(fs, root)):
        with fs.open(path, "rb") as f:
            yield from read_parquet(f).to_pylist()
