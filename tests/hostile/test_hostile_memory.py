"""The reported pair of small files that took a labeling run to 7.66 GiB: a 9.8 KB PNG declaring
9999x9999 (complete, valid bilevel data: it is labeled, at full size) and a 2.4 KB JPEG declaring
9000x9000 (holding 48x64 of real data: refused). The whole job runs in a subprocess while the test
watches the peak memory (VmHWM) of every Ray worker process it starts, loaders and labeling
actors alike, and holds them to the budget the README documents."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds
import skimage.data
from PIL import Image, ImageDraw
from processes import kill_run, pids_with_env

from pipeline.masks.label_maps import decode_label_map

REPO = Path(__file__).resolve().parents[2]
# What one worker process may reach with the tiny test model (README, "Memory"): Python, PyTorch
# and Ray take about 1 GiB; post-processing a 100-megapixel label map adds about 0.5 GiB. (The
# reported run took its labeling actor to 3.88 GiB and its loader to 2.48 GiB.)
WORKER_BUDGET_MIB = 1792


def _bilevel_png(side: int) -> bytes:
    """A complete 1-bit PNG of `side` x `side` pixels with large shapes: a few KB."""
    image = Image.new("1", (side, side), 0)
    draw = ImageDraw.Draw(image)
    draw.rectangle((side // 8, side // 8, side // 2, side // 2), fill=1)
    draw.ellipse((side // 2, side // 3, side - side // 10, side - side // 10), fill=1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _edited_jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((64, 48)).save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    struct.pack_into(">HH", data, data.find(b"\xff\xc0") + 5, side, side)
    return bytes(data)


def _worker_peaks(ray_tmpdir: str, peaks: dict[int, tuple[str, int]]) -> None:
    """Record each of the run's Ray worker processes' own peak memory (KiB) and title."""
    for pid in pids_with_env("RAY_TMPDIR", ray_tmpdir):
        try:
            title = (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]).decode(errors="replace")
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        if not title.startswith("ray::"):
            continue  # the driver, GCS, raylet and agents are not workers
        high_water = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
        peaks[pid] = (title, max(high_water, peaks.get(pid, ("", 0))[1]))


def test_bombs_are_labeled_or_refused_within_the_memory_budget(tmp_path, tiny_weights, sandbox):
    images = tmp_path / "images"
    images.mkdir()
    (images / "bilevel_9999.png").write_bytes(_bilevel_png(9999))
    (images / "edited_9000.jpg").write_bytes(_edited_jpeg(9000))
    (images / "photo.jpg").write_bytes(_photo_jpeg())
    assert (images / "bilevel_9999.png").stat().st_size < 200_000
    assert (images / "edited_9000.jpg").stat().st_size < 5_000
    output = tmp_path / "labels"
    command = [
        sys.executable, str(REPO / "jobs" / "label.py"),
        "--vocab", "voc20", "--input", str(images), "--output", str(output),
        "--batch-size", "2", "--concurrency", "1,1", "--max-error-ratio", "1", *tiny_weights,
    ]  # fmt: skip
    ray_tmpdir = tempfile.mkdtemp(prefix="memory-", dir=sandbox.root)  # names every process of the run
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=ray_tmpdir)
    peaks: dict[int, tuple[str, int]] = {}
    with (tmp_path / "job.log").open("w") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            deadline = time.monotonic() + 600
            while driver.poll() is None and time.monotonic() < deadline:
                _worker_peaks(ray_tmpdir, peaks)
                time.sleep(0.1)
            assert driver.poll() == 0, (tmp_path / "job.log").read_text()[-4000:]
        finally:
            driver.kill()
            driver.wait()
            kill_run("RAY_TMPDIR", ray_tmpdir)

    rows = {Path(r["image_uri"]).name: r for r in ds.dataset(str(output), format="parquet").to_table().to_pylist()}
    assert sorted(rows) == ["bilevel_9999.png", "edited_9000.jpg", "photo.jpg"]
    assert "CorruptImageError: JPEG data ends early" in rows["edited_9000.jpg"]["error"]
    bilevel = rows["bilevel_9999.png"]
    assert bilevel["error"] is None and (bilevel["width"], bilevel["height"]) == (9999, 9999)
    assert decode_label_map(bilevel["label_map_png"]).shape == (9999, 9999)
    assert sum(s["area"] for s in bilevel["segments"]) > 0
    assert rows["photo.jpg"]["error"] is None

    titles = sorted({title for title, _ in peaks.values()})
    assert any("SanLabeler" in t for t in titles), titles  # the actor was watched
    worst_title, worst_kib = max(peaks.values(), key=lambda p: p[1])
    assert worst_kib / 1024 < WORKER_BUDGET_MIB, f"{worst_title} peaked at {worst_kib / 1024:.0f} MiB"
    manifest = json.loads((output / "_manifest.json").read_text())
    actor_peak = manifest["peak_memory_mib"]["labeling_actor"]
    assert 0 < actor_peak < WORKER_BUDGET_MIB


def _photo_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
