"""Jobs called from Python run on the Ray the calling process already runs (a notebook's, an
application's) and leave it running; `ray.init` would refuse a second start. A job that starts
its own Ray stops it at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from image_fixtures import jpeg_bytes
from training_fixtures import TAXONOMY_YAML, write_manifest_dataset

from jobs.finetune import main as finetune_main
from jobs.label import main as label_main
from pipeline.ray_session import ray_for_job


def _one_image(folder) -> None:
    folder.mkdir()
    pattern = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    (folder / "pattern.jpg").write_bytes(jpeg_bytes(pattern))


def test_a_label_job_joins_the_ray_this_process_runs_and_leaves_it_up(ray_session, tmp_path, tiny_weights):
    import ray

    address = ray.get_runtime_context().gcs_address
    with ray_for_job() as started:
        assert not started
    assert ray.is_initialized()

    _one_image(tmp_path / "in")
    args = ["--vocab", "voc20", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *tiny_weights]
    assert label_main(args) == 0
    assert ray.is_initialized() and ray.get_runtime_context().gcs_address == address
    assert list((tmp_path / "out").glob("*.parquet"))


def test_fine_tuning_on_a_joined_ray_too_small_for_it_says_so(ray_session, tmp_path, parity_dir, capsys):
    """Ray Train would wait forever for CPUs the joined Ray does not have: the job stops, named."""
    import ray

    manifest = write_manifest_dataset(tmp_path / "train", 2)
    (tmp_path / "taxonomy.yaml").write_text(TAXONOMY_YAML)
    cpus = ray.cluster_resources()["CPU"]
    tiny = parity_dir / "tiny_a"
    args = [
        "--vocab", str(tmp_path / "taxonomy.yaml"), "--train", str(manifest),
        "--checkpoint", str(tiny / "checkpoint.pth"), "--model-config", str(tiny / "config.json"),
        "--output", str(tmp_path / "run"), "--max-steps", "1", "--crop-size", "32",
        "--cpus-per-worker", str(cpus),
    ]  # fmt: skip
    assert finetune_main(args) == 1
    message = capsys.readouterr().err
    assert f"fine-tuning needs {int(cpus) + 2} CPUs" in message and f"the Ray this process runs has {cpus:g}" in message
    assert ray.is_initialized()


def _dashboard_module_logs(session: Path) -> list[str]:
    """The logs of the dashboard's modules (MetricsHead, JobHead, ...) in a Ray session's folder."""
    return sorted(path.name for path in (session / "logs").glob("dashboard_*Head.log"))


# these last two stop the module's shared Ray (ray_session is set up once per module)
def test_a_job_that_starts_ray_stops_it(no_ray_session, tmp_path, tiny_weights):
    import ray

    _one_image(tmp_path / "in")
    args = ["--vocab", "voc20", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *tiny_weights]
    assert label_main(args) == 0
    assert not ray.is_initialized()

    # with nothing new to label, no Ray is started at all: no new session directory
    sessions = Path(os.environ["RAY_TMPDIR"]) / "ray"
    before = sorted(sessions.glob("session_2*"))
    assert before  # (the first run's, where Ray keeps them)
    assert not _dashboard_module_logs(before[-1])  # and the Ray it started ran no dashboard
    assert label_main(args) == 0
    assert sorted(sessions.glob("session_2*")) == before and not ray.is_initialized()
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 1, "labeled": 0, "failed": 0, "skipped": 1}


def test_a_ray_a_job_starts_runs_the_dashboard_only_when_asked(no_ray_session):
    """--ray-dashboard (`ray_for_job(dashboard=True)`): the dashboard and its modules come up."""
    import ray

    sessions = Path(os.environ["RAY_TMPDIR"]) / "ray"
    with ray_for_job(dashboard=True) as started:
        assert started
        session = sessions / ray.get_runtime_context().get_session_name()
        assert "dashboard_MetricsHead.log" in _dashboard_module_logs(session), sorted(session.rglob("*"))
    assert not ray.is_initialized()
