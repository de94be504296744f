"""One run at a time per output: a second `san label` into a folder another run holds exits 75
naming that run, on local disk and on S3, whether it starts 1 s after the first or mid-run; after
any overlap a plain reader sees one row per image and each manifest counts its own run. The lease
behind it: exactly one of racing runs takes a folder; a SIGKILLed holder frees it at once on its
host, a frozen one when its lease lapses, and then learns it lost the folder."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import fsspec
import pyarrow.dataset as ds
import pytest
from image_fixtures import jpeg_bytes

from jobs.label import main as label_main
from pipeline.store import LabelStore, OutputBusy
from schemas.jobs import OUTPUT_BUSY_EXIT
from schemas.output import LeaseRecord

SAN = Path(sys.executable).parent / "san"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse")

# A holder in its own process: takes the lease, says so, and waits for a line on stdin; then
# checks it still holds the folder (exit 3 if it lost it) and lets go.
HOLDER = """
import sys
from pipeline.store import LabelStore, LeaseLost
lease = LabelStore(sys.argv[1]).lease("holder-run", float(sys.argv[2]))
lease.acquire()
print("held", flush=True)
sys.stdin.readline()
try:
    lease.check()
except LeaseLost as e:
    print(e, flush=True)
    sys.exit(3)
lease.release()
"""


def _folder(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "local":
        return str(tmp_path / "labels")
    return f"{request.getfixturevalue('s3_bucket')}/labels"


def _holder(folder: str, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, folder, str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def _leases(folder: str) -> list[LeaseRecord]:
    fs, root = fsspec.core.url_to_fs(folder)
    fs.invalidate_cache()
    return [LeaseRecord.model_validate_json(fs.cat_file(p)) for p in sorted(fs.glob(f"{root}/_lease/*.json"))]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_of_racing_runs_exactly_one_takes_the_folder(kind, tmp_path, request):
    folder = _folder(kind, tmp_path, request)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def race(number: int) -> None:
        lease = LabelStore(folder).lease(f"run-{number}", 60)
        start.wait()
        try:
            lease.acquire()
            outcomes.append(f"won {number}")
        except OutputBusy as e:
            outcomes.append(f"refused: {e}")

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and len(outcomes) == 8
    winner = winners[0].split()[1]
    assert all(f"held by run run-{winner} (host " in o for o in outcomes if o.startswith("refused"))
    (lease,) = _leases(folder)
    assert lease.run_id == f"run-{winner}" and lease.pid == os.getpid() and not lease.released


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_released_lease_frees_the_folder_and_leaves_nothing(kind, tmp_path, request):
    folder = _folder(kind, tmp_path, request)
    for run in range(3):
        with LabelStore(folder).lease(f"run-{run}", 60):
            (held,) = _leases(folder)
            assert held.run_id == f"run-{run}" and held.generation == 1
        assert _leases(folder) == []
    if kind == "local":  # a run that failed before writing leaves the folder as it found it
        assert list((tmp_path / "labels").iterdir()) == []


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_sigkilled_holder_frees_the_folder_at_once_on_its_host(kind, tmp_path, request, caplog):
    folder = _folder(kind, tmp_path, request)
    holder = _holder(folder, 3600)  # an hour: only the dead process can free it this soon
    with pytest.raises(OutputBusy, match=f"held by run holder-run \\(host .*, pid {holder.pid},"):
        LabelStore(folder).lease("next", 60).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    caplog.set_level(logging.INFO, logger="pipeline.store.lease")
    lease = LabelStore(folder).lease("next", 60)
    lease.acquire()
    assert "took over" in caplog.text and "holder-run (its lease had lapsed)" in caplog.text
    lease.release()


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_frozen_holder_loses_the_folder_when_its_lease_lapses_and_knows_it(kind, tmp_path, request):
    folder = _folder(kind, tmp_path, request)
    holder = _holder(folder, 2.0)
    try:
        os.kill(holder.pid, signal.SIGSTOP)  # a driver stalled (swapping, a debugger): it renews nothing
        with pytest.raises(OutputBusy):  # alive, and its lease not yet lapsed
            LabelStore(folder).lease("next", 60).acquire()
        time.sleep(2.5)
        lease = LabelStore(folder).lease("next", 60)
        lease.acquire()
        os.kill(holder.pid, signal.SIGCONT)
        out, _ = holder.communicate("commit?\n", timeout=60)
        assert holder.returncode == 3
        assert out.startswith(f"run holder-run's lease on {folder.removeprefix('s3://')}") or out.startswith(
            f"run holder-run's lease on {folder}"
        )
        lease.check()  # the new holder still holds it
        assert [r.run_id for r in _leases(folder)] == ["next"]
        lease.release()
    finally:
        holder.kill()


def test_a_lease_of_another_host_holds_until_it_expires(tmp_path):
    folder = tmp_path / "labels"
    (folder / "_lease").mkdir(parents=True)
    now = datetime.now(timezone.utc)
    record = LeaseRecord(
        generation=7, run_id="elsewhere-run", host="another-node", pid=os.getpid(), process_started=0.0,
        acquired_at=now, expires_at=now + timedelta(seconds=60),
    )  # fmt: skip
    path = folder / "_lease" / "0000000007.json"
    path.write_text(record.model_dump_json())
    with pytest.raises(OutputBusy, match="held by run elsewhere-run \\(host another-node"):
        LabelStore(str(folder)).lease("next", 60).acquire()
    path.write_text(record.model_copy(update={"expires_at": now - timedelta(seconds=1)}).model_dump_json())
    with LabelStore(str(folder)).lease("next", 60):
        (held,) = _leases(str(folder))
        assert held.generation == 8 and held.run_id == "next"


# -- whole runs


def _images(folder: str) -> list[str]:
    import skimage.data

    fs, root = fsspec.core.url_to_fs(folder)
    fs.makedirs(root, exist_ok=True)
    uris = []
    for name in PHOTOS:
        fs.pipe(f"{root}/{name}.jpg", jpeg_bytes(getattr(skimage.data, name)()))
        uris.append(f"{folder.rstrip('/')}/{name}.jpg")
    return uris


def _one_row_per_image(output: str, images: list[str]) -> None:
    """What plain readers see: pyarrow's dataset and DuckDB, over every Parquet file."""
    fs, root = fsspec.core.url_to_fs(output)
    files = [p for p in fs.find(root) if p.endswith(".parquet") and "/_" not in p[len(root) :]]
    uris = ds.dataset(files, filesystem=fs, format="parquet").to_table(columns=["image_uri"])["image_uri"]
    assert sorted(uris.to_pylist()) == sorted(images)
    if fs.protocol == "file" or "file" in fs.protocol:
        count, distinct = duckdb.sql(
            f"SELECT count(*), count(DISTINCT image_uri) FROM read_parquet({[str(p) for p in files]})"
        ).fetchall()[0]
        assert count == distinct == len(images)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_label_runs_started_a_second_apart(kind, tmp_path, request, tiny_weights):
    base = str(tmp_path) if kind == "local" else request.getfixturevalue("s3_bucket")
    images = _images(f"{base}/in")
    output = f"{base}/out"
    command = [str(SAN), "label", "--vocab", "voc20", "--input", f"{base}/in", "--output", output, *tiny_weights]
    command += ["--rows-per-file", "2", "--batch-size", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # a nightly run started while the last one still runs
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = [p.communicate(timeout=600)[0] for p in (first, second)]
    codes = [first.returncode, second.returncode]
    assert sorted(codes) == [0, OUTPUT_BUSY_EXIT], logs  # whichever took the lease first ran
    ran, refused = (logs[0], logs[1]) if codes[0] == 0 else (logs[1], logs[0])
    manifest = json.loads(fsspec.open(f"{output}/_manifest.json").open().read())
    assert manifest["counts"] == {"inputs": 6, "labeled": 6, "failed": 0, "skipped": 0}
    assert f"is held by run {manifest['run_id']} (host " in refused and f"exit {OUTPUT_BUSY_EXIT}" in refused
    assert "labeled" not in refused.split("is held by run")[0]  # refused before it planned anything
    assert f"run {manifest['run_id']}: 6 labeled" in ran
    _one_row_per_image(output, images)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_label_run_started_mid_run_is_refused(kind, tmp_path, request, tiny_weights, capfd):
    base = str(tmp_path) if kind == "local" else request.getfixturevalue("s3_bucket")
    images = _images(f"{base}/in")
    output = f"{base}/out"
    args = ["--vocab", "voc20", "--input", f"{base}/in", "--output", output, *tiny_weights]
    args += ["--rows-per-file", "1", "--batch-size", "1"]
    codes: list[int] = []
    first = threading.Thread(target=lambda: codes.append(label_main(args)))
    first.start()
    fs, root = fsspec.core.url_to_fs(output)
    deadline = time.monotonic() + 300
    while first.is_alive() and time.monotonic() < deadline:  # until its first result file is there
        fs.invalidate_cache()
        if fs.exists(root) and any(p.rsplit("/", 1)[-1].startswith("labels-") for p in fs.find(root)):
            break
        time.sleep(0.05)
    assert first.is_alive(), "the first run ended before a second could start mid-run"
    assert label_main(args) == OUTPUT_BUSY_EXIT
    refused = capfd.readouterr().err
    first.join(timeout=600)
    assert codes == [0]
    manifest = json.loads(fs.cat(f"{root}/_manifest.json"))
    assert manifest["counts"] == {"inputs": 6, "labeled": 6, "failed": 0, "skipped": 0}
    assert f"is held by run {manifest['run_id']} (host " in refused and f"exit {OUTPUT_BUSY_EXIT}" in refused
    _one_row_per_image(output, images)
    assert label_main(args) == 0  # and the next run, after it, finds everything done
    assert json.loads(fs.cat(f"{root}/_manifest.json"))["counts"]["skipped"] == 6
