"""The cluster paths: `ray job submit` (labeling and fine-tuning) to a `ray start --head` node, and
resume after SIGKILL."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from image_fixtures import GOOD_PHOTOS, jpeg_bytes, write_image_set
from processes import kill_run, pids_with_env
from training_fixtures import TAXONOMY_YAML, write_manifest_dataset

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _own_ports() -> list[str]:
    """`ray start` flags for the ports it would otherwise take at their fixed defaults (52365,
    10001), which any other Ray on the machine (this process's own, say) may hold."""
    return [f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}"]


def _ray_start(flags: Callable[[], list[str]], env: dict[str, str], ray_tmpdir: str | None = None) -> None:
    """`ray start` with the flags `flags()` makes, tried three times with the fresh ports each call of
    it picks: a port found free here can be taken by another process before Ray binds it. Before
    a retry, the processes a failed head start left are killed (by `ray_tmpdir`, when given). The
    error, if every try fails, carries what `ray start` printed and the tails of Ray's own logs."""
    failures = []
    for _ in range(3):
        args = flags()
        result = subprocess.run(
            [str(BIN / "ray"), "start", *args], env=env, capture_output=True, text=True, timeout=180, check=False
        )
        if result.returncode == 0:
            return
        failures.append(
            f"ray start {' '.join(args)} exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        )
        if ray_tmpdir is not None:
            for log in sorted(Path(ray_tmpdir).glob("*/session_latest/logs/*.err")):
                if log.stat().st_size:
                    failures.append(f"{log.name}: {log.read_text(errors='replace')[-1000:]}")
            kill_run("RAY_TMPDIR", ray_tmpdir)
    raise AssertionError("\n\n".join(failures))


def _env(**extra: str) -> dict[str, str]:
    # Token authentication explicitly on for server and client alike: left unset, `ray start`
    # turns it on whenever ~/.ray/auth_token exists but `ray job submit` may not send the token.
    env = dict(
        os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token"
    )
    env.update(extra)
    return env


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return f"{pid} (gone)"


def _readable_rows(directory: Path) -> list[dict]:
    rows = []
    for path in sorted(directory.glob("*.parquet")):
        try:
            rows.extend(pq.read_table(path, columns=["image_uri", "error"]).to_pylist())
        except Exception:
            pass  # a file being written right now
    return rows


def _unreadable(directory: Path) -> list[Path]:
    broken = []
    for path in directory.glob("*.parquet"):
        try:
            pq.read_metadata(path)
        except Exception:
            broken.append(path)
    return broken


def _scrape_until(url: str, needle: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            pass
        if needle in text:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{needle} never appeared at {url}:\n{text[-3000:]}")


def _metric_values(text: str, name: str) -> dict[str, float]:
    """Sum of a metric's samples by each label pair they carry (outcome="labeled" -> 7)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            for pair in labels.split(","):
                values[pair] = values.get(pair, 0) + float(value)
    return values


def wait_for_job_agent(address: str, timeout_s: float = 180) -> None:
    """`ray start --head` returns before its job agent takes jobs ("No available agent to submit
    job"): submit a no-op job until one is accepted."""
    deadline = time.monotonic() + timeout_s
    probe = [str(BIN / "ray"), "job", "submit", "--address", address, "--no-wait", "--", "true"]
    while True:
        result = subprocess.run(probe, env=_env(), capture_output=True, text=True, timeout=120, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the job agent at {address} took no job in {timeout_s}s: {result.stderr[-2000:]}")
        time.sleep(0.5)


@dataclass
class HeadNode:
    address: str  # the dashboard's, for `ray job submit`
    metrics_url: str  # Prometheus metrics of the node's agent
    ray_tmpdir: Path  # the node's sessions: its logs and its records


@pytest.fixture()
def cluster_secret(s3_server, monkeypatch) -> str:
    """A marker S3 secret key in this process's environment, where `ray start` finds it (moto
    checks no signature): the README's recipe gives the nodes their credentials, never the job."""
    marker = f"marker-secret-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", marker)
    return marker


@pytest.fixture()
def head_node(sandbox, cluster_secret):
    """A real single-node Ray cluster started with `ray start --head` in an environment that holds
    the S3 credentials; killed afterwards, by its own RAY_TMPDIR (`ray stop` would stop every Ray
    on the machine, this process's own included)."""
    ray_tmpdir = tempfile.mkdtemp(prefix="head-", dir=sandbox.root)
    ports: dict[str, int] = {}

    def flags() -> list[str]:
        ports.update(gcs=_free_port(), dashboard=_free_port(), metrics=_free_port())
        return [
            "--head",
            f"--port={ports['gcs']}",
            f"--dashboard-port={ports['dashboard']}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            "--disable-usage-stats",
            f"--metrics-export-port={ports['metrics']}",
            *_own_ports(),
        ]

    # creates ~/.ray/auth_token only when there is none
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=_env(), check=True, capture_output=True)
    # metrics twice a second
    _ray_start(flags, _env(RAY_TMPDIR=ray_tmpdir, RAY_metrics_report_interval_ms="500"), ray_tmpdir)
    dashboard_port, metrics_port = ports["dashboard"], ports["metrics"]
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for_job_agent(address)
        yield HeadNode(address, f"http://127.0.0.1:{metrics_port}/metrics", Path(ray_tmpdir))
    finally:
        kill_run("RAY_TMPDIR", ray_tmpdir)


def _where_it_shows(marker: str, head_node: HeadNode, submission_ids: list[str], fs, prefixes: list[str]) -> list[str]:
    """Every place among Ray's records of the jobs (list, status, logs), the node's session files
    and the jobs' outputs (Parquet read back as values) that holds `marker`."""
    import pyarrow.parquet as pq

    ray_job = [str(BIN / "ray"), "job"]
    records = {"ray job list": [*ray_job, "list", "--address", head_node.address]}
    for submission in submission_ids:
        for verb in ("status", "logs"):
            records[f"ray job {verb} {submission}"] = [*ray_job, verb, "--address", head_node.address, submission]
    found = []
    for name, command in records.items():
        result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120, check=True)
        if name == "ray job list":  # the records are those of these jobs
            assert all(submission in result.stdout for submission in submission_ids), result.stdout[-2000:]
        if marker in result.stdout + result.stderr:
            found.append(name)
    files = [path for path in head_node.ray_tmpdir.rglob("*") if path.is_file() and not path.is_symlink()]
    assert any(path.name.startswith("job-driver-") for path in files)  # the drivers' logs are among them
    found += [str(path) for path in files if marker.encode() in path.read_bytes()]
    for prefix in prefixes:
        for key in fs.find(prefix):
            data = fs.cat(key)
            if key.endswith(".parquet"):
                data = str(pq.read_table(io.BytesIO(data)).to_pylist()).encode()
            if marker.encode() in data:
                found.append(key)
    return found


def test_ray_job_submit_label_and_finetune_s3_to_s3(
    head_node, cluster_secret, s3_bucket, s3_server, parity_dir, tmp_path
):
    """Labeling and fine-tuning through `ray job submit`, S3 to S3, with the credentials given to
    the node as the README says: the secret shows in no Ray record, log or output."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    expected = write_image_set(tmp_path / "images")
    for name in expected:
        fs.put(str(tmp_path / "images" / name), f"{s3_bucket}/in/{name}")
    fs.pipe(f"{s3_bucket}/weights/checkpoint.pth", (parity_dir / "tiny_a" / "checkpoint.pth").read_bytes())
    fs.pipe(f"{s3_bucket}/weights/config.json", (parity_dir / "tiny_a" / "config.json").read_bytes())
    submission_ids = [f"label-{os.getpid()}-{time.monotonic_ns()}", f"finetune-{os.getpid()}-{time.monotonic_ns()}"]
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        head_node.address,
        "--submission-id",
        submission_ids[0],
        "--working-dir",
        str(REPO),
        # only what is not secret, as the README's recipe has it
        "--runtime-env-json",
        json.dumps({"env_vars": {"AWS_DEFAULT_REGION": "us-east-1"}}),
        "--",
        "python",
        "jobs/label.py",
        "--vocab",
        "voc20",
        "--input",
        f"{s3_bucket}/in/",
        "--output",
        f"{s3_bucket}/out/",
        "--checkpoint",
        f"{s3_bucket}/weights/checkpoint.pth",
        "--model-config",
        f"{s3_bucket}/weights/config.json",
        "--max-error-ratio",
        "0.5",
    ]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    printed = [result.stdout + result.stderr]
    manifest = json.loads(fs.cat(f"{s3_bucket}/out/_manifest.json"))
    assert manifest["counts"] == {"inputs": 11, "labeled": 7, "failed": 4, "skipped": 0}
    assert manifest["digests"]["checkpoint"] is not None
    # the labeling actors' Ray metrics, as Prometheus scrapes them from the node
    metrics = _scrape_until(head_node.metrics_url, "ray_san_batch_seconds")
    labeled = _metric_values(metrics, "ray_san_images_total")
    assert labeled.get('outcome="labeled"') == 7 and labeled.get('outcome="error"') == 4, labeled
    errors = _metric_values(metrics, "ray_san_image_errors_total")
    assert errors.get('kind="permanent"') == 4 and 'kind="transient"' not in errors, errors  # broken files

    # fine-tuning through the same cluster: pairs, checkpoints and the exported model on S3
    write_manifest_dataset(tmp_path / "pairs", 4)
    fs.put(str(tmp_path / "pairs" / "images"), f"{s3_bucket}/pairs/", recursive=True)
    fs.put(str(tmp_path / "pairs" / "labels"), f"{s3_bucket}/pairs/", recursive=True)
    rows = "".join(f"images/{i:04d}.jpg,labels/{i:04d}.png\n" for i in range(4))
    fs.pipe(f"{s3_bucket}/pairs/train.csv", ("image_uri,label_uri\n" + rows).encode())
    fs.pipe(f"{s3_bucket}/taxonomy.yaml", TAXONOMY_YAML.encode())
    finetune = [
        *command[: command.index(submission_ids[0])], submission_ids[1],
        *command[command.index(submission_ids[0]) + 1 : command.index("--") + 1],
        "python", "jobs/finetune.py",
        "--vocab", f"{s3_bucket}/taxonomy.yaml",
        "--train", f"{s3_bucket}/pairs/train.csv",
        "--checkpoint", f"{s3_bucket}/weights/checkpoint.pth", "--model-config", f"{s3_bucket}/weights/config.json",
        "--output", f"{s3_bucket}/ft",
        "--max-steps", "4", "--batch-size", "2", "--crop-size", "64", "--checkpoint-every", "2",
    ]  # fmt: skip
    result = subprocess.run(finetune, env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    summary = json.loads(fs.cat(f"{s3_bucket}/ft/model/training_summary.json"))
    assert summary["step"] == 4 and [r["step"] for r in summary["losses"]] == [1, 2, 3, 4]
    assert fs.exists(f"{s3_bucket}/ft/model/model.safetensors")

    # the jobs read S3 with the node's secret, and nothing of theirs or Ray's shows it
    printed.append(result.stdout + result.stderr)
    assert not any(cluster_secret in text for text in printed)
    prefixes = [f"{s3_bucket}/out", f"{s3_bucket}/ft"]
    assert _where_it_shows(cluster_secret, head_node, submission_ids, fs, prefixes) == []
    # the check sees a secret where one is: the same records of a job that carries it
    leaky = [*command[: command.index(submission_ids[0])], "leaky-" + submission_ids[0],
             "--runtime-env-json", json.dumps({"env_vars": {"AWS_SECRET_ACCESS_KEY": cluster_secret}}),
             "--no-wait", "--", "true"]  # fmt: skip
    subprocess.run(leaky, env=_env(), capture_output=True, text=True, timeout=300, check=True)
    assert "ray job list" in _where_it_shows(cluster_secret, head_node, ["leaky-" + submission_ids[0]], fs, [])


def test_resume_after_sigkill_labels_every_image_exactly_once(tmp_path, tiny_weights, sandbox):
    import skimage.data

    images = tmp_path / "images"
    images.mkdir()
    count = 28
    for i in range(count):
        photo = getattr(skimage.data, GOOD_PHOTOS[i % len(GOOD_PHOTOS)])()
        (images / f"img{i:03d}.jpg").write_bytes(jpeg_bytes(photo[i % 7 :: 2, i % 5 :: 2]))  # distinct
    output = tmp_path / "out"
    command = [
        sys.executable,
        str(REPO / "jobs" / "label.py"),
        "--vocab",
        "voc20",
        "--input",
        str(images),
        "--output",
        str(output),
        "--rows-per-file",
        "2",
        "--batch-size",
        "1",
        *tiny_weights,
    ]

    ray_tmpdir = tempfile.mkdtemp(prefix="kill-", dir=sandbox.root)  # names every process of the first run
    # as a scheduler would start it, from a process that may itself carry a driver's token
    env = _env(RAY_TMPDIR=ray_tmpdir, SAN_LABELER_DRIVER=f"{os.getpid()}-a-parent-driver")
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(_readable_rows(output)) < 4 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, "the first run finished before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would
    driver.wait()
    # Nothing it started outlives it: GCS, raylet, agents and workers are gone within seconds.
    deadline = time.monotonic() + 60
    while (survivors := pids_with_env("RAY_TMPDIR", ray_tmpdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    titles = [_title(pid) for pid in survivors]
    kill_run("RAY_TMPDIR", ray_tmpdir)  # only if the assertion below is about to fail
    assert not survivors, f"left behind by the killed driver: {titles}"
    after_kill = _readable_rows(output)
    assert 4 <= len(after_kill) < count
    assert not (output / "_manifest.json").exists()  # the killed run never finished

    rerun = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = _readable_rows(output)
    uris = [r["image_uri"] for r in rows]
    assert len(uris) == len(set(uris)) == count  # every image exactly once
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["counts"]["skipped"] >= len(after_kill)
    assert manifest["counts"]["skipped"] + manifest["counts"]["labeled"] == count


def test_actors_ask_for_gpus_that_the_autoscaler_can_bring_up(no_ray_session):
    """With no GPU up, the default GPU request follows the autoscaler's node types, recorded in
    the GCS as an autoscaler reports them (written here as one would)."""
    import ray
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_put

    from pipeline.labeling.actors import ActorLayout, actor_layout, gpus_per_actor
    from schemas.jobs import LabelJobConfig

    def layout(**flags: object) -> ActorLayout:
        return actor_layout(LabelJobConfig(vocab="voc20", input="i/", output="o/", **flags))

    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        assert gpus_per_actor(None) == 0.0  # no GPU up, no autoscaler
        assert gpus_per_actor(0.5) == 0.5
        assert layout() == ActorLayout(gpus=0.0, concurrency=(1, 1), batch_size=4)  # one CPU actor
        cpu_only = autoscaler_pb2.NodeGroupConfig(name="cpu", resources={"CPU": 16}, min_count=0, max_count=10)
        gpu = autoscaler_pb2.NodeGroupConfig(name="gpu", resources={"CPU": 8, "GPU": 1}, min_count=0, max_count=4)
        for groups, expected in (([cpu_only], 0.0), ([cpu_only, gpu], 0.5)):
            config = autoscaler_pb2.ClusterConfig(node_group_configs=groups)
            _internal_kv_put(
                GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString(), namespace=GCS_AUTOSCALER_STATE_NAMESPACE
            )
            assert gpus_per_actor(None) == expected, groups
        assert gpus_per_actor(0.0) == 0.0  # an explicit request wins
        # two actors per GPU, from one until the autoscaler's four GPUs are up, at the GPU batch size
        assert layout() == ActorLayout(gpus=0.5, concurrency=(1, 8), batch_size=32)
        assert layout(gpus_per_actor=1.0) == ActorLayout(gpus=1.0, concurrency=(1, 4), batch_size=32)
        flags = {"gpus_per_actor": 0.25, "concurrency": (2, 3), "batch_size": 8}
        assert layout(**flags) == ActorLayout(gpus=0.25, concurrency=(2, 3), batch_size=8)  # flags win
    finally:
        ray.shutdown()


def test_a_labeling_actor_killed_mid_run_loses_no_row(tmp_path, tiny_weights, sandbox):
    """SIGKILL one SAN actor while it labels: Ray Data starts another and hands it the lost batch,
    the run finishes, and every image has exactly one row (a re-run then has nothing to do)."""
    import skimage.data

    images = tmp_path / "images"
    images.mkdir()
    count = 16
    for i in range(count):
        photo = getattr(skimage.data, GOOD_PHOTOS[i % len(GOOD_PHOTOS)])()
        (images / f"img{i:03d}.jpg").write_bytes(jpeg_bytes(photo[i % 7 :: 2, i % 5 :: 2]))  # distinct
    output = tmp_path / "out"
    command = [
        sys.executable, str(REPO / "jobs" / "label.py"), "--vocab", "voc20",
        "--input", str(images), "--output", str(output),
        "--rows-per-file", "2", "--batch-size", "1", "--concurrency", "1,1", *tiny_weights,
    ]  # fmt: skip
    ray_tmpdir = tempfile.mkdtemp(prefix="actor-", dir=sandbox.root)
    log = tmp_path / "first.log"
    with log.open("w") as out:
        driver = subprocess.Popen(command, env=_env(RAY_TMPDIR=ray_tmpdir), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while len(_readable_rows(output)) < 4 and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert driver.poll() is None, "the run finished before its actor could be killed"
            titles = {pid: _title(pid) for pid in pids_with_env("RAY_TMPDIR", ray_tmpdir)}
            actors = [pid for pid, title in titles.items() if "SanLabeler" in title]
            assert len(actors) == 1, titles
            os.kill(actors[0], signal.SIGKILL)
            killed_at = len(_readable_rows(output))
            code = driver.wait(timeout=600)
        finally:
            if driver.poll() is None:
                driver.kill()
            kill_run("RAY_TMPDIR", ray_tmpdir)
    assert killed_at < count
    assert code == 0, log.read_text()[-4000:]
    uris = [r["image_uri"] for r in _readable_rows(output)]
    assert len(uris) == len(set(uris)) == count  # none lost, none twice
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["counts"] == {"inputs": count, "labeled": count, "failed": 0, "skipped": 0}

    rerun = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(r["image_uri"] for r in _readable_rows(output)) == sorted(uris)
    assert json.loads((output / "_manifest.json").read_text())["counts"]["skipped"] == count


def test_local_paths_on_a_multi_node_cluster_stop_the_job(tmp_path, tiny_weights, sandbox):
    """Two real nodes (`ray start --head`, then `ray start --address`): the second node cannot see
    this machine's folders, so the job stops with the flags to change before any work."""
    ray_tmpdir = tempfile.mkdtemp(prefix="nodes-", dir=sandbox.root)  # names both nodes' processes
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=_env(), check=True, capture_output=True)
    start = ["--num-cpus=1", "--disable-usage-stats"]
    ports: dict[str, int] = {}

    def head_flags() -> list[str]:
        ports["gcs"] = _free_port()
        return [*start, "--head", f"--port={ports['gcs']}", "--include-dashboard=false", *_own_ports()]

    def worker_flags() -> list[str]:
        return [*start, f"--address=127.0.0.1:{ports['gcs']}", f"--dashboard-agent-listen-port={_free_port()}"]

    try:
        _ray_start(head_flags, _env(RAY_TMPDIR=ray_tmpdir), ray_tmpdir)
        _ray_start(worker_flags, _env(RAY_TMPDIR=ray_tmpdir))  # a retry must not kill the head
        gcs_port = ports["gcs"]
        images = tmp_path / "images"
        images.mkdir()
        pattern = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
        (images / "photo.jpg").write_bytes(jpeg_bytes(pattern))
        output = tmp_path / "out"
        command = [
            sys.executable, str(REPO / "jobs" / "label.py"), "--vocab", "voc20",
            "--input", str(images), "--output", str(output), *tiny_weights,
        ]  # fmt: skip
        result = subprocess.run(
            command, env=_env(RAY_ADDRESS=f"127.0.0.1:{gcs_port}"), capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 1, result.stderr[-3000:]
        message = result.stderr
        assert "the Ray cluster has 2 nodes" in message and "--shared-local-paths" in message, message[-3000:]
        assert f"--input {images}" in message and f"--output {output}" in message
        assert "--checkpoint" not in message  # a local checkpoint is fine: only the driver reads it
        assert not list(output.glob("*.parquet"))  # nothing was labeled
    finally:
        kill_run("RAY_TMPDIR", ray_tmpdir)


def test_a_video_actor_killed_mid_video_leaves_each_frame_once_and_no_broken_file(tmp_path, tiny_weights, sandbox):
    """SIGKILL the video actor while it writes a video's file: the half-written file goes, Ray Data
    labels that video again in another actor, and every sampled frame has exactly one row."""
    import skimage.data
    from video_fixtures import camera_frames, encode

    videos = tmp_path / "videos"
    videos.mkdir()
    count, frames = 3, 16
    for i in range(count):
        photo = getattr(skimage.data, GOOD_PHOTOS[i % len(GOOD_PHOTOS)])()[..., :3]
        (videos / f"cam{i}.mkv").write_bytes(encode(camera_frames(photo, frames, (72, 96)), "mkv", fps=10))
    output = tmp_path / "out"
    command = [
        sys.executable, str(REPO / "jobs" / "label.py"), "--vocab", "voc20",
        "--input", str(videos), "--output", str(output), "--frame-stride", "1", "--clip-length", "2",
        "--concurrency", "1,1", *tiny_weights,
    ]  # fmt: skip
    ray_tmpdir = tempfile.mkdtemp(prefix="video-actor-", dir=sandbox.root)
    log = tmp_path / "first.log"
    with log.open("w") as out:
        driver = subprocess.Popen(command, env=_env(RAY_TMPDIR=ray_tmpdir), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            # the first video done, the second being written: a file without its footer yet
            while (
                (
                    len({r["image_uri"].split("#")[0] for r in _readable_rows(output)}) < 1
                    or len(list(output.glob("_staging/*.parquet"))) < 1
                )
                and driver.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            assert driver.poll() is None, "the run finished before its actor could be killed"
            titles = {pid: _title(pid) for pid in pids_with_env("RAY_TMPDIR", ray_tmpdir)}
            actors = [pid for pid, title in titles.items() if "SanVideoLabeler" in title]
            assert len(actors) == 1, titles
            os.kill(actors[0], signal.SIGKILL)
            code = driver.wait(timeout=600)
        finally:
            if driver.poll() is None:
                driver.kill()
            kill_run("RAY_TMPDIR", ray_tmpdir)
    assert code == 0, log.read_text()[-4000:]
    assert "left unfinished by a writer that failed or was killed" in log.read_text()  # in _staging/, unseen
    assert not (output / "_staging").exists()
    assert not _unreadable(output)  # every file a reader finds is whole
    uris = [r["image_uri"] for r in _readable_rows(output)]
    assert len(uris) == len(set(uris)) == count * frames  # every frame once: none lost, none twice
    assert json.loads((output / "_manifest.json").read_text())["counts"]["labeled"] == count * frames
