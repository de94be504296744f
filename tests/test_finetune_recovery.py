"""Fine-tuning survives failures, with data and checkpoints on S3 (a moto server): a training
worker killed mid-run (Ray Train restarts the group from the latest checkpoint), then the whole
driver killed and the run continued with --resume. The step count and the loss curve continue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import kill_run
from training_fixtures import TAXONOMY_YAML, write_manifest_dataset

from jobs.finetune import main as finetune_main

REPO = Path(__file__).resolve().parents[1]
STEPS = 25
EVERY = 3  # --checkpoint-every


def _position_step(fs, uri: str) -> int:
    fs.invalidate_cache()
    try:
        return int(json.loads(fs.cat_file(uri))["step"])
    except FileNotFoundError:
        return 0


def _wait_for_step(fs, uri: str, step: int, driver: subprocess.Popen, timeout_s: float = 420) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reached = _position_step(fs, uri)
        if reached >= step:
            return reached
        assert driver.poll() is None, f"the run ended early with {driver.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} within {timeout_s}s")


def _training_worker_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


def test_worker_death_and_driver_kill_then_resume_on_s3(s3_bucket, s3_server, parity_dir, tmp_path, sandbox, capsys):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    local = tmp_path / "data"
    write_manifest_dataset(local, 6)
    fs.put(str(local / "images"), f"{s3_bucket}/data/", recursive=True)
    fs.put(str(local / "labels"), f"{s3_bucket}/data/", recursive=True)
    rows = "".join(f"images/{i:04d}.jpg,labels/{i:04d}.png\n" for i in range(6))  # relative to the manifest
    fs.pipe(f"{s3_bucket}/data/manifest.csv", ("image_uri,label_uri\n" + rows).encode())
    fs.pipe(f"{s3_bucket}/taxonomy.yaml", TAXONOMY_YAML.encode())

    tiny = parity_dir / "tiny_a"
    storage = f"{s3_bucket}/runs/ft"
    command = [
        sys.executable, str(REPO / "jobs" / "finetune.py"),
        "--vocab", f"{s3_bucket}/taxonomy.yaml",
        "--train", f"{s3_bucket}/data/manifest.csv",
        "--checkpoint", str(tiny / "checkpoint.pth"), "--model-config", str(tiny / "config.json"),
        "--output", storage,
        "--workers", "2", "--batch-size", "2", "--max-steps", str(STEPS), "--crop-size", "64",
        "--checkpoint-every", str(EVERY), "--log-every", "1", "--lr", "1e-3",
    ]  # fmt: skip
    ray_tmpdir = tempfile.mkdtemp(prefix="kill-", dir=sandbox.root)  # names every process of the run
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=ray_tmpdir)
    position = f"{storage}/train/position.json"
    log = tmp_path / "first.log"
    with log.open("w") as out:
        driver = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_step(fs, position, 3, driver)
            workers = _training_worker_pids()
            assert len(workers) == 2, workers
            os.kill(workers[1], signal.SIGKILL)  # Ray Train restarts the group from the latest checkpoint
            killed_driver_at = _wait_for_step(fs, position, 12, driver)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
            driver.wait()
            kill_run("RAY_TMPDIR", ray_tmpdir)
    assert killed_driver_at < STEPS, log.read_text()[-3000:]

    assert finetune_main(command[2:]) == 1  # refused before Ray starts: run in this process
    refusal = capsys.readouterr().err
    assert "already holds a fine-tuning run at step" in refusal and "--resume" in refusal

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=900, check=False)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    at = _position_step(fs, position)
    assert at == STEPS
    assert "resuming the run" in resumed.stdout

    summary = json.loads(fs.cat_file(f"{storage}/model/training_summary.json"))
    assert summary["step"] == STEPS and summary["samples"] == 2 * STEPS
    assert [row["step"] for row in summary["losses"]] == list(range(1, STEPS + 1))  # no gap, no repeat
    restarts = summary["resumed_at"]
    assert len(restarts) == 2, restarts  # the worker death, then --resume
    assert 3 <= restarts[0] < 12 <= restarts[1] < STEPS
    assert fs.exists(f"{storage}/model/model.safetensors")
    kept = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{storage}/train") if "step_" in p)
    # the last two, as Ray Train keeps them; checkpoints uploaded just before a failure, which Ray
    # Train never registered, are pruned at the end too
    last_periodic = (STEPS - 1) // EVERY * EVERY
    assert kept == [f"step_{last_periodic:08d}", f"step_{STEPS:08d}"], kept
