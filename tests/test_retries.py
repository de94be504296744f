"""Transient failures are retried and told apart from permanent ones; `--retry-errors` replaces
earlier error rows, leaving exactly one row per image for plain readers (pyarrow, DuckDB).

Faults are real: a TCP proxy in front of the moto S3 server answers 503 or resets the connection
halfway through a response (`tests/faults.py`)."""

from __future__ import annotations

import errno
import io
import json
import tempfile
from collections import Counter
from pathlib import Path

import aiohttp
import botocore.exceptions
import duckdb
import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import skimage.data
from faults import FaultyProxy
from PIL import Image, UnidentifiedImageError

from jobs.label import main as label_main
from pipeline.media.integrity import CorruptImageError
from pipeline.retries import is_transient, read_bytes
from pipeline.store.join import AntiJoin
from pipeline.store.scan import drop_superseded, scan_output
from schemas.output import label_row_schema

pytestmark = pytest.mark.usefixtures("ray_session")


def _jpeg(index: int) -> bytes:
    buffer = io.BytesIO()
    photo = (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket())[index % 4]
    Image.fromarray(photo).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, "GetObject")


def _caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (_caused(OSError(errno.EBUSY, "SlowDown"), _client_error(503, "SlowDown")), True),  # as s3fs raises it
        (_caused(OSError(errno.EIO, "boom"), _client_error(500, "InternalError")), True),
        (_client_error(400, "ThrottlingException"), True),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), True),
        (aiohttp.ClientPayloadError("Response payload is not completed"), True),
        (_caused(FileNotFoundError("images/x.jpg"), _client_error(404, "NoSuchKey")), False),
        (_caused(PermissionError("denied"), _client_error(403, "AccessDenied")), False),
        (FileNotFoundError("/data/x.jpg"), False),
        (UnidentifiedImageError("not an image"), False),
        (CorruptImageError("JPEG data ends early"), False),
        (ValueError("image is over the pixel limit"), False),
    ],
)
def test_errors_are_told_transient_or_permanent(error, transient):
    assert is_transient(error) is transient


def test_a_missing_file_is_not_retried(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "nothing.jpg"), attempts=4, first_delay_s=30)  # would take minutes if retried


@pytest.fixture()
def faulty_s3(s3_server, s3_bucket):
    proxy = FaultyProxy(int(s3_server.rsplit(":", 1)[1]))
    yield proxy, s3_bucket
    proxy.close()


def test_outage_faults_are_retried_and_what_persists_is_retried_next_run(faulty_s3, tiny_weights):
    proxy, bucket = faulty_s3
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for index, name in enumerate(["burst", "down", "dropped", "fine"]):
        fs.pipe(f"{bucket}/images/{name}.jpg", _jpeg(index))
    fs.pipe(f"{bucket}/images/text.jpg", b"not an image at all")
    bucket_name = bucket.removeprefix("s3://")
    proxy.inject("GET", f"/{bucket_name}/images/burst.jpg", "503", times=3)  # a burst of 503s
    proxy.inject("GET", f"/{bucket_name}/images/down.jpg", "503")  # an outage that outlasts the run
    proxy.inject("GET", f"/{bucket_name}/images/dropped.jpg", "drop", times=2)  # connection reset mid-body
    # only this job's own retries between the job and the faults (botocore's are off)
    options = json.dumps({"endpoint_url": proxy.endpoint, "config_kwargs": {"retries": {"total_max_attempts": 1}}})
    args = [
        "--vocab", "voc20", "--input", f"{bucket}/images/", "--output", f"{bucket}/labels/",
        "--storage-options", options, "--max-error-ratio", "1", *tiny_weights,
    ]  # fmt: skip

    assert label_main(args) == 0
    rows = _rows(fs, f"{bucket}/labels")
    assert rows["burst.jpg"]["error"] is None and rows["dropped.jpg"]["error"] is None
    assert rows["down.jpg"]["error_kind"] == "transient", rows["down.jpg"]["error"]
    assert rows["text.jpg"]["error_kind"] == "permanent" and "not an image" in rows["text.jpg"]["error"]
    assert proxy.injected[("503", f"/{bucket_name}/images/burst.jpg")] == 3
    assert proxy.injected[("503", f"/{bucket_name}/images/down.jpg")] == 4  # --io-attempts, then given up
    assert proxy.injected[("drop", f"/{bucket_name}/images/dropped.jpg")] == 2

    proxy.clear()  # the outage is over
    assert label_main(args) == 0  # a plain re-run leaves error rows as they are
    assert _rows(fs, f"{bucket}/labels")["down.jpg"]["error_kind"] == "transient"
    assert label_main([*args, "--retry-errors", "transient"]) == 0
    rows = _rows(fs, f"{bucket}/labels")
    assert rows["down.jpg"]["error"] is None and rows["down.jpg"]["segments"]
    assert rows["text.jpg"]["error_kind"] == "permanent"  # not retried: it would fail the same way
    manifest = json.loads(fs.cat_file(f"{bucket}/labels/_manifest.json"))
    assert manifest["counts"]["labeled"] == 1 and manifest["counts"]["failed"] == 0


def _rows(fs, output: str) -> dict[str, dict]:
    """Rows by file name, read as a plain reader would; fails on a second row for an image."""
    fs.invalidate_cache()  # s3fs keeps listings; the job has changed the folder since
    table = ds.dataset(output.removeprefix("s3://"), filesystem=fs, format="parquet").to_table()
    names = [Path(u).name for u in table.column("image_uri").to_pylist()]
    assert max(Counter(names).values()) == 1, Counter(names)
    return dict(zip(names, table.to_pylist(), strict=True))


def test_retry_errors_all_relabels_a_fixed_file_and_duckdb_sees_one_row_each(tmp_path, tiny_weights):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        (images / f"photo{index}.jpg").write_bytes(_jpeg(index))
    (images / "broken.jpg").write_bytes(_jpeg(3)[:500])
    output = tmp_path / "labels"
    args = ["--vocab", "voc20", "--input", str(images), "--output", str(output), "--max-error-ratio", "1"]
    args += ["--rows-per-file", "2", *tiny_weights]
    assert label_main(args) == 0
    assert label_main([*args, "--retry-errors", "transient"]) == 0  # a truncated file is permanent
    (images / "broken.jpg").write_bytes(_jpeg(3))  # someone fixed it
    assert label_main([*args, "--retry-errors", "all"]) == 0

    counts = duckdb.sql(
        "SELECT image_uri, count(*) AS n, any_value(error) AS error "
        f"FROM read_parquet('{output}/**/*.parquet') GROUP BY 1"
    ).fetchall()
    assert sorted(Path(uri).name for uri, _, _ in counts) == ["broken.jpg", "photo0.jpg", "photo1.jpg", "photo2.jpg"]
    assert all(n == 1 and error is None for _, n, error in counts), counts
    # the runs' row indexes sit beside the data, where no Parquet reader looks
    assert [p.suffix for p in (output / "_row_index").iterdir()] == [".arrow", ".arrow"]  # runs 1 and 3
    assert ds.dataset(str(output), format="parquet").count_rows() == 4


def _write(path: Path, run_id: str, rows: list[tuple[str, str | None]]) -> None:
    table = pa.Table.from_pylist(
        [
            {
                "image_uri": uri,
                "segments": [],
                "model_id": "m",
                "taxonomy_digest": "t",
                "error": error,
                "error_kind": "transient" if error else None,
            }
            for uri, error in rows
        ],
        schema=label_row_schema(run_id=run_id),
    )
    pq.write_table(table, path)


def _plan(fs, root: Path, retry_errors: str = "none", inputs: tuple[str, ...] = ("u1", "u2")):
    """What the planner decides for an output folder: (state, decision)."""
    with tempfile.TemporaryDirectory() as scratch:
        join = AntiJoin(scratch)
        join.add_inputs(pa.array(list(inputs)))
        state = scan_output(fs, str(root), join, scratch)
        return state, join.decide(state.file_rank(), retry_errors, sort_by_uri=True)


def test_a_run_killed_while_tidying_up_is_resolved_by_the_next_plan(tmp_path):
    """The later run's row counts; a copy written before its original was removed is resolved too."""
    fs = fsspec.filesystem("file")
    _write(tmp_path / "labels-a_000000.parquet", "20260101T000000Z-a", [("u1", "timeout"), ("u2", None)])
    _write(tmp_path / "labels-b_000000.parquet", "20260102T000000Z-b", [("u1", None)])
    (tmp_path / "other_team.parquet").write_bytes(b"not ours")

    state, decision = _plan(fs, tmp_path, retry_errors="all")
    assert len(decision.todo) == 0 and decision.inputs == 2  # u1's later row is no error
    losers = {state.paths[n]: uris.to_pylist() for n, uris in decision.superseded.items()}
    assert losers == {str(tmp_path / "labels-a_000000.parquet"): ["u1"]}
    superseded = {state.paths[n]: uris for n, uris in decision.superseded.items()}
    drop_superseded(fs, superseded, "20260103T000000Z-c")
    files = sorted(p.name for p in tmp_path.glob("labels-*.parquet"))
    assert "labels-a_000000.parquet" not in files and len(files) == 2
    rows = ds.dataset(str(tmp_path), format="parquet", exclude_invalid_files=True).to_table(columns=["image_uri"])
    assert sorted(rows.column("image_uri").to_pylist()) == ["u1", "u2"]
    assert (tmp_path / "other_team.parquet").exists()

    # the state a kill leaves between writing a copy and removing its original: u2 twice
    _write(tmp_path / "labels-a_000000.parquet", "20260101T000000Z-a", [("u1", "timeout"), ("u2", None)])
    fs.invalidate_cache()
    state, decision = _plan(fs, tmp_path)
    losers = {state.paths[n]: sorted(uris.to_pylist()) for n, uris in decision.superseded.items()}
    assert losers == {str(tmp_path / "labels-a_000000.parquet"): ["u1", "u2"]}
    drop_superseded(fs, {state.paths[n]: uris for n, uris in decision.superseded.items()}, "20260104T000000Z-d")
    assert not (tmp_path / "labels-a_000000.parquet").exists()
    fs.invalidate_cache()
    state, decision = _plan(fs, tmp_path)
    assert not decision.superseded and len(decision.todo) == 0 and len(state.complete) == 2


def test_the_checkpoint_is_read_once_per_job_by_the_driver_alone(faulty_s3, parity_dir, tmp_path):
    """The driver reads the weights; the actors build their models from its copy in the object
    store, so no node reads the checkpoint again (counted at the S3 proxy)."""
    from san_core.checkpoint import read_checkpoint

    proxy, bucket = faulty_s3
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    checkpoint_key = f"{bucket}/weights/checkpoint.pth"
    fs.pipe(checkpoint_key, (parity_dir / "tiny_a" / "checkpoint.pth").read_bytes())
    for index in range(4):
        fs.pipe(f"{bucket}/images/{index}.jpg", _jpeg(index))
    options = {"endpoint_url": proxy.endpoint}
    path = "/" + checkpoint_key.removeprefix("s3://")

    read_checkpoint(checkpoint_key, options)  # what one read of it costs at the proxy
    one_read = proxy.requests[("GET", path)]
    assert one_read >= 1
    proxy.requests.clear()
    args = [
        "--vocab", "voc20", "--input", f"{bucket}/images/", "--output", str(tmp_path / "labels"),
        "--checkpoint", checkpoint_key, "--model-config", str(parity_dir / "tiny_a" / "config.json"),
        "--storage-options", json.dumps(options), "--batch-size", "1",
    ]  # fmt: skip
    assert label_main(args) == 0
    assert proxy.requests[("GET", path)] == one_read  # the driver's read, and no actor's
    assert len(ds.dataset(str(tmp_path / "labels"), format="parquet").to_table()) == 4
