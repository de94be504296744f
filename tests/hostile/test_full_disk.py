"""A run that fills its disk: the output folder sits on a small tmpfs (mounted in a private user
and mount namespace, so no root is needed and nothing outside the test sees it). The run exits 1,
and no file under a result name is half-written: pyarrow and DuckDB read the folder as it is.
Given room again, the next run completes it with one row per image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import skimage.data
from image_fixtures import jpeg_bytes

REPO = Path(__file__).resolve().parents[2]
SAN = Path(sys.executable).parent / "san"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse")

# What a plain reader sees of a folder: every Parquet file pyarrow's dataset finds, and DuckDB's
# read of OUT/*.parquet, as JSON.
READERS = """
import json, sys, glob
import duckdb, pyarrow.dataset as ds
folder = sys.argv[1]
table = ds.dataset(folder, format="parquet").to_table(columns=["image_uri"])
files = sorted(glob.glob(folder + "/*.parquet"))
rows = duckdb.sql(f"SELECT count(*) FROM read_parquet({files})").fetchall()[0][0] if files else 0
print(json.dumps({"pyarrow": table.num_rows, "duckdb": rows, "uris": sorted(table["image_uri"].to_pylist()),
                  "files": len(files)}))
"""


def test_a_full_disk_leaves_no_half_written_result_file(tmp_path, tiny_weights):
    assert shutil.which("unshare"), "util-linux's unshare is needed to mount a tmpfs without root"
    images, disk = tmp_path / "images", tmp_path / "disk"
    images.mkdir()
    disk.mkdir()
    for name in PHOTOS:
        (images / f"{name}.jpg").write_bytes(jpeg_bytes(getattr(skimage.data, name)()))
    output = disk / "labels"
    label = [str(SAN), "label", "--vocab", "voc20", "--input", str(images), "--output", str(output), *tiny_weights]
    label += ["--rows-per-file", "1", "--batch-size", "1"]
    readers = [sys.executable, "-c", READERS, str(output)]
    quoted = lambda command: " ".join(f"'{part}'" for part in command)  # noqa: E731 (paths without quotes)
    script = f"""
        mount -t tmpfs -o size=64k tmpfs '{disk}' || exit 90
        {quoted(label)} > '{tmp_path}/first.log' 2>&1; echo "first $?"
        {quoted(readers)}
        ls -la '{output}' '{output}/_staging' 2>/dev/null | sed 's/^/# /'
        mount -o remount,size=64m '{disk}' || exit 91
        {quoted(label)} > '{tmp_path}/second.log' 2>&1; echo "second $?"
        {quoted(readers)}
        ls '{output}/_staging' 2>/dev/null | wc -l | sed 's/^/staged /'
    """
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    first_log = (tmp_path / "first.log").read_text()
    assert result.returncode == 0 and lines[0] == "first 1", result.stdout + result.stderr + first_log
    assert "No space left on device" in first_log
    after_failure = json.loads(lines[1])  # readable, and whatever it holds is whole
    assert after_failure["pyarrow"] == after_failure["duckdb"] == after_failure["files"] < len(PHOTOS)
    assert lines[2] == "second 0", (tmp_path / "second.log").read_text()
    after = json.loads(lines[3])
    assert after["pyarrow"] == after["duckdb"] == len(PHOTOS)
    assert after["uris"] == sorted(str(images / f"{name}.jpg") for name in PHOTOS)
    assert lines[4] == "staged 0"  # the failed run's leftovers were tidied away
