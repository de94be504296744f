"""Find the images a job should label, and fail early when the input cannot be read at all (or an
output cannot be written: `check_output_writable`).

An input is a directory or object-store prefix (searched recursively for image files), a glob,
or a manifest file (.txt with one URI per line, .csv or .parquet with a `uri` column). Any fsspec
protocol works; s3:// uses s3fs with the standard AWS environment and config files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from .media.images import IMAGE_EXTENSIONS
from .media.video import VIDEO_EXTENSIONS
from .storage import ParquetReader, is_local, read_parquet, with_protocol

# What the labeling job takes from a folder or glob: images and videos.
LABEL_INPUT_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS

MANIFEST_EXTENSIONS = (".txt", ".csv", ".parquet")
BATCH_ROWS = 1 << 16  # URIs per batch when inputs are streamed


class InputError(RuntimeError):
    """The input or output location cannot be used; nothing has been processed."""


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def explain_read_error(uri: str, error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if isinstance(error, PermissionError):
        return f"cannot read {uri}: access denied, check the credentials ({text})"
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        return f"cannot read {uri}: the bucket does not exist ({text})"
    if any(
        word in lowered
        for word in ("accessdenied", "forbidden", "invalidaccesskeyid", "signaturedoesnotmatch", "credentials")
    ):
        return f"cannot read {uri}: access denied, check the credentials ({text})"
    return f"cannot read {uri}: {text}"


def read_manifest_rows(
    fs: fsspec.AbstractFileSystem, path: str, required: tuple[str, ...], source: str | None = None
) -> list[dict[str, Any]]:
    """The rows of a manifest as dicts keyed by column: .parquet, .csv (with a header) or .txt (one
    URI per line, `#` comments; its one column is `uri`). Raises InputError when a `required`
    column is missing, even from an empty manifest."""
    source = source or path
    with fs.open(path, "rb") as f:
        data = f.read()
    if path.endswith(".parquet"):
        table = read_parquet(io.BytesIO(data))
        columns, rows = table.column_names, table.to_pylist()
    elif path.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        columns = list(reader.fieldnames or [])
        rows = [{k: v.strip() if isinstance(v, str) else v for k, v in row.items()} for row in reader]
    else:
        columns = ["uri"]
        lines = (line.strip() for line in data.decode("utf-8-sig").splitlines())
        rows = [{"uri": line} for line in lines if line and not line.startswith("#")]
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputError(
            f"manifest {source} has no {' or '.join(repr(c) for c in missing)} column (columns: {columns})"
        )
    return rows


def list_inputs(
    uri: str, storage_options: Mapping[str, Any] | None = None, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
) -> list[str]:
    """Every URI of a file with one of `extensions` (images by default) the input names, sorted;
    raises InputError when it cannot be read."""
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if any(ch in path for ch in "*?["):
            found = [p for p in fs.glob(path) if p.lower().endswith(extensions)]
            if not found and not fs.exists(path.split("*", 1)[0].rsplit("/", 1)[0] or "/"):
                raise InputError(f"cannot read {uri}: nothing matches and the parent does not exist")
            return sorted(with_protocol(p, uri) for p in found)
        if fs.isfile(path):
            if path.lower().endswith(MANIFEST_EXTENSIONS):
                return [row["uri"] for row in read_manifest_rows(fs, path, ("uri",), uri) if row["uri"]]
            if path.lower().endswith(extensions):
                return [uri]
            kinds = "an image or video" if extensions == LABEL_INPUT_EXTENSIONS else "an image"
            raise InputError(f"{uri} is neither {kinds} nor a manifest ({', '.join(MANIFEST_EXTENSIONS)})")
        if not fs.isdir(path):
            bucket = path.split("/", 1)[0]
            if _protocol(uri) != "file" and not fs.exists(bucket):
                raise InputError(f"cannot read {uri}: the bucket {bucket!r} does not exist")
            raise InputError(f"cannot read {uri}: no such file, directory or prefix")
        found = [p for p in fs.find(path) if p.lower().endswith(extensions)]
        return sorted(with_protocol(p, uri) for p in found)
    except InputError:
        raise
    except Exception as e:  # missing bucket, bad credentials, unreachable endpoint, ...
        raise InputError(explain_read_error(uri, e)) from e


def stream_inputs(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Iterator[pa.Array], bool]:
    """The image and video URIs the input names as a stream of Arrow string batches, and whether their order
    is the input's own (a manifest's) rather than none (a listing, to be sorted). A manifest is
    read batch by batch and a folder one directory at a time, so no list of every URI is made.
    Raises InputError (at once, or while streaming) when the input cannot be read."""
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        is_manifest = not any(ch in path for ch in "*?[") and path.lower().endswith(MANIFEST_EXTENSIONS)
        if is_manifest and fs.isfile(path):
            return _guarded(uri, _manifest_batches(fs, path, uri)), True
        if any(ch in path for ch in "*?[") or fs.isfile(path):
            listed = list_inputs(uri, storage_options, LABEL_INPUT_EXTENSIONS)
            return iter([pa.array(listed, pa.string())]), False
        if not fs.isdir(path):
            list_inputs(uri, storage_options, LABEL_INPUT_EXTENSIONS)  # raises the error that says why
        return _guarded(uri, _walk_batches(fs, path, uri)), False
    except InputError:
        raise
    except Exception as e:
        raise InputError(explain_read_error(uri, e)) from e


def _guarded(uri: str, batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
    try:
        yield from batches
    except InputError:
        raise
    except Exception as e:
        raise InputError(explain_read_error(uri, e)) from e


def _walk_batches(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> Iterator[pa.Array]:
    for directory, subdirectories, names in fs.walk(path):
        subdirectories.sort()
        inputs = sorted(n for n in names if n.lower().endswith(LABEL_INPUT_EXTENSIONS))
        for start in range(0, len(inputs), BATCH_ROWS):
            chunk = inputs[start : start + BATCH_ROWS]
            yield pa.array([with_protocol(f"{directory.rstrip('/')}/{n}", uri) for n in chunk], pa.string())


def _manifest_batches(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> Iterator[pa.Array]:
    # Python's csv module rather than pyarrow.csv: Arrow's CSV reader reads a Python file on a
    # thread of its own, which can abort the process at exit (see ParquetReader).
    with fs.open(path, "rb") as f:
        if path.lower().endswith(".parquet"):
            with ParquetReader(f) as parquet:
                if "uri" not in parquet.schema_arrow.names:
                    raise InputError(f"manifest {uri} has no 'uri' column (columns: {parquet.schema_arrow.names})")
                for batch in parquet.iter_batches(BATCH_ROWS, ["uri"]):
                    yield _clean(batch.column(0))
        elif path.lower().endswith(".csv"):
            rows = csv.reader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))
            header = next(rows, [])
            if "uri" not in header:
                raise InputError(f"manifest {uri} has no 'uri' column (columns: {header})")
            column = header.index("uri")
            uris = (row[column] if column < len(row) else "" for row in rows)
            yield from (_clean(batch) for batch in _string_batches(uris))
        else:
            lines = (line.strip() for line in io.TextIOWrapper(f, encoding="utf-8-sig"))
            yield from _string_batches(line for line in lines if line and not line.startswith("#"))


def _string_batches(strings: Iterator[str]) -> Iterator[pa.Array]:
    """`strings` as string arrays of BATCH_ROWS (the last one shorter, possibly empty)."""
    batch: list[str] = []
    for string in strings:
        batch.append(string)
        if len(batch) == BATCH_ROWS:
            yield pa.array(batch, pa.string())
            batch = []
    yield pa.array(batch, pa.string())


def _clean(uris: pa.Array) -> pa.Array:
    uris = pc.utf8_trim_whitespace(uris.cast(pa.string()))
    return uris.filter(pc.fill_null(pc.greater(pc.utf8_length(uris), 0), False))


def check_output_writable(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write and delete a probe object so bad credentials fail before any work."""
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        fs.makedirs(path, exist_ok=True)
        probe = f"{path.rstrip('/')}/_write_probe"
        fs.pipe(probe, b"ok")
        fs.rm(probe)
    except Exception as e:
        raise InputError(explain_read_error(uri, e).replace("cannot read", "cannot write to")) from e


def check_paths_for_cluster(paths: Mapping[str, str | None], nodes: int, shared: bool) -> None:
    """Raise InputError when a cluster of several nodes would be handed local paths: the workers
    on the other nodes read and write their own disks, not this one (unless every node mounts the
    same file system there, which `shared` says)."""
    local = [f"{flag} {uri}" for flag, uri in paths.items() if uri and is_local(uri)]
    if nodes > 1 and local and not shared:
        raise InputError(
            f"the Ray cluster has {nodes} nodes, and these are local paths that only this machine "
            f"sees: {'; '.join(local)}. Use shared storage (s3://, gs://, ...), or pass "
            "--shared-local-paths if every node mounts the same file system at these paths."
        )
