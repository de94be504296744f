"""What a job prints in a log file: the plan, progress of long steps, a summary; no escape codes,
no line twice, none of Ray's start-up chatter; -q keeps warnings, errors and the summary."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from image_fixtures import jpeg_bytes

from pipeline.ray_session import PROJECT_LOGGERS, configure_logging

SAN = Path(sys.executable).parent / "san"


def _label(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SAN), "label", *args], capture_output=True, text=True, timeout=900, check=False, env=dict(os.environ)
    )


def test_a_labeling_run_says_what_matters_and_nothing_twice(tmp_path, tiny_weights):
    import skimage.data

    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "coffee"):
        (images / f"{name}.jpg").write_bytes(jpeg_bytes(getattr(skimage.data, name)()))
    (images / "broken.jpg").write_bytes(b"not an image")
    args = ["--vocab", "voc20", "--input", str(images), "--output", str(tmp_path / "out"), *tiny_weights]
    args += ["--vocab-cache", str(tmp_path / "vocab-cache")]  # a fresh cache: the build is reported
    args += ["--progress-every", "1", "--max-error-ratio", "0.5"]
    run = _label(args)
    assert run.returncode == 0, run.stderr[-3000:]
    out, err = run.stdout, run.stderr
    assert "\x1b" not in out + err  # not a terminal: no colours, no progress bars
    assert "building vocabulary 'voc20'" in out and "vocabulary 'voc20' built in" in out
    assert "3 inputs: 0 already labeled, 3 to label" in out
    assert "2 labeled, 1 failed, 0 skipped" in out and f"results in {tmp_path / 'out'}" in out
    progress = [line for line in out.splitlines() if line.startswith("labeling: ")]
    assert progress and all(re.match(r"labeling: [0-3]/3 \(\d+%\) after \d+s, [\d.]+ images/s", p) for p in progress)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), "a line printed twice"
    for noise in ("Traceback", "Token authentication is enabled", "Progress bars disabled", "Running Dataset"):
        assert noise not in out + err, noise

    quiet = _label([*args, "-q"])  # nothing new to label: -q prints the summary line alone
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    (summary,) = quiet.stdout.splitlines()
    assert re.fullmatch(rf"run \S+: 0 labeled, 0 failed, 3 skipped in [\d.]+s; results in {tmp_path / 'out'}", summary)


def test_logging_is_configured_once_per_process(capsys):
    configure_logging("INFO")
    configure_logging("WARNING")  # a second call changes the level, adds no second handler
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        ours = [h for h in logger.handlers if h.get_name() == "san-labeler"]  # (pytest may add its own)
        assert logger.level == logging.WARNING and len(ours) == 2 and not logger.propagate
    logging.getLogger("pipeline.x").info("hidden")
    logging.getLogger("pipeline.x").warning("shown")
    captured = capsys.readouterr()
    assert "hidden" not in captured.out + captured.err
    assert captured.err.count("warning: shown") == 1
    configure_logging("INFO")


def test_progress_line_says_done_rate_errors_and_time_left():
    from pipeline.labeling.progress import ProgressCounter, error_kind, progress_line

    counter = ProgressCounter()
    counter.add(4, ["cannot load image: UnidentifiedImageError: not an image", "labeling failed: OSError: disk"])
    counter.add(6, ["cannot load image: UnidentifiedImageError: again"])
    done, errors = counter.snapshot()
    assert done == 10 and errors == {"UnidentifiedImageError": 2, "OSError": 1}
    assert error_kind("plain message") == "plain message"
    line = progress_line(done, 1000, errors, rate=2.5, elapsed_s=65)
    assert line == (
        "labeling: 10/1,000 (1%) after 1m05s, 2.50 images/s, 3 errors (UnidentifiedImageError 2, OSError 1), "
        "about 6m36s left"
    )


def test_a_process_that_reads_results_exits_cleanly(tmp_path):
    """`pq.read_table` on a Python file object lets Arrow's threads touch the file after it returns;
    when that happens while the interpreter exits, the process aborts (20 runs in 40 here with
    this file, and `san demo` once in CI). Every read of a Python file goes through
    `read_parquet`, which is done with the file when it returns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "part-0.parquet"
    rows = 100_000
    pq.write_table(pa.table({"image_uri": [f"s3://b/{i}.jpg" for i in range(rows)]}), path, row_group_size=5_000)
    script = "import sys\nfrom pipeline.storage import read_parquet\n"
    script += "print(read_parquet(open(sys.argv[1], 'rb')).num_rows)"
    repo = Path(__file__).resolve().parents[1]
    for _ in range(12):
        result = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=repo, timeout=120
        )
        assert result.returncode == 0 and result.stdout.strip() == str(rows), result.stderr[-2000:]
    readers = [p for folder in ("pipeline", "jobs") for p in (repo / folder).rglob("*.py")]
    # Arrow's readers of Python files: pyarrow.csv reads them on a thread of its own
    arrow_readers = ("pq.read_table(", "pq.ParquetFile(", "import pyarrow.csv")
    direct = [p for p in readers if any(reader in p.read_text() for reader in arrow_readers)]
    assert [str(p.relative_to(repo)) for p in direct] == ["pipeline/storage.py"]


def test_reading_results_touches_the_python_file_only_on_the_calling_thread():
    """The abort above is rare on some machines (none in 900 runs here with `ParquetFile`'s
    defaults, once in a CI run), so this checks its cause directly: with pre-buffering, Arrow's
    I/O threads read the file, and with threaded decoding its CPU threads do. ParquetReader, which
    every reader of a Python file goes through, reads it on the calling thread alone."""
    import gc
    import io
    import threading

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.storage import ParquetReader, read_parquet

    class ReleaseRecordingBytes(bytes):
        """Bytes that note the thread which releases them (Arrow keeps what `read` returns)."""

        threads: set[int]

        def __del__(self) -> None:
            self.threads.add(threading.get_ident())

    class ThreadRecordingFile(io.BytesIO):
        """Notes every thread that reads it, seeks it or releases what it read."""

        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.threads: set[int] = set()

        def read(self, size: int | None = -1) -> bytes:
            self.threads.add(threading.get_ident())
            data = ReleaseRecordingBytes(super().read(size))
            data.threads = self.threads
            return data

        def seek(self, offset: int, whence: int = 0) -> int:
            self.threads.add(threading.get_ident())
            return super().seek(offset, whence)

    rows = 50_000
    table = pa.table({"image_uri": [f"s3://b/{i}.jpg" for i in range(rows)], "height": list(range(rows))})
    written = io.BytesIO()
    pq.write_table(table, written, row_group_size=5_000)
    for columns in (None, ["height"]):
        file = ThreadRecordingFile(written.getvalue())
        read = read_parquet(file, columns)
        assert read.num_rows == rows and read.column_names == (columns or table.column_names)
        del read  # the table may hold the bytes read
        gc.collect()
        assert file.threads == {threading.get_ident()}
    file = ThreadRecordingFile(written.getvalue())
    with ParquetReader(file) as parquet:
        assert parquet.num_row_groups == 10
        assert parquet.read_row_group(3, ["height"]).column("height").to_pylist() == list(range(15_000, 20_000))
        assert sum(batch.num_rows for batch in parquet.iter_batches(4_000, ["image_uri"])) == rows
    gc.collect()
    assert file.threads == {threading.get_ident()}
