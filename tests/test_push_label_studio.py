"""`san push label-studio` against a real Label Studio server (the `label-studio` package, in its
own virtualenv `.venv-label-studio` that `make` creates, started here on 127.0.0.1): tasks made
once per image, pushed twice with nothing new, a re-labeled run's predictions replacing the old
ones, a push killed with SIGKILL and finished by the next, shards, and the failures a user meets
(a wrong token, no server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import skimage.data
from image_fixtures import jpeg_bytes
from label_studio_converter.brush import decode_rle
from label_studio_server import free_port, label_studio_server

from jobs.label import main as label_main
from pipeline.masks.coco_rle import rle_to_mask

REPO = Path(__file__).resolve().parents[1]
SAN = [sys.executable, str(REPO / "jobs" / "cli.py")]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
TOKEN = "san-labeler-test-token"


@dataclass
class Server:
    url: str
    token: str

    def get(self, path: str):
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Token {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, body) -> None:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), method="POST")
        request.add_header("Authorization", f"Token {self.token}")
        request.add_header("Content-Type", "application/json")
        urllib.request.urlopen(request, timeout=60).close()

    def projects(self) -> dict[str, int]:
        return {p["title"]: p["id"] for p in self.get("/api/projects?page_size=1000")["results"]}

    def tasks(self, project: int) -> list[dict]:
        return self.get(f"/api/tasks?project={project}&page_size=100000&fields=all")["tasks"]


@pytest.fixture(scope="module")
def label_studio(sandbox, request) -> Iterator[Server]:
    """The server, started first: the labeling outputs are made while it boots (a minute here)."""
    data = Path(tempfile.mkdtemp(prefix="label-studio-", dir=sandbox.root))
    with label_studio_server(data, TOKEN, while_booting=lambda: request.getfixturevalue("outputs")) as url:
        yield Server(url, TOKEN)


@pytest.fixture(scope="module")
def outputs(ray_session, tmp_path_factory, tiny_weights, parity_dir) -> dict[str, Path]:
    """Two labeling outputs of the same photos: with the tiny model, and with the same weights
    saved again as a fine-tuning run would (another file, so another checkpoint digest)."""
    from san_core.build import load_model
    from san_core.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("push")
    images = root / "images"
    images.mkdir()
    for name in PHOTOS:
        (images / f"{name}.jpg").write_bytes(jpeg_bytes(getattr(skimage.data, name)()))
    (images / "broken.jpg").write_bytes(b"not a photograph")  # an error row: never pushed
    tiny = parity_dir / "tiny_a"
    loaded = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json"))
    finetuned = root / "ft" / "model.safetensors"
    save_checkpoint(loaded.model, loaded.model.config, str(finetuned))
    runs = {"first": tiny_weights, "finetuned": ["--checkpoint", str(finetuned)]}
    for name, weights in runs.items():
        args = ["--vocab", "voc20", "--input", str(images), "--output", str(root / name), "--short-side", "128"]
        assert label_main([*args, "--max-error-ratio", "0.5", *weights]) == 0
    return {name: root / name for name in runs}


def _push(server: Server, labels: Path, project: str, *flags: str, token: str | None = None):
    env = dict(os.environ, LABEL_STUDIO_URL=server.url, LABEL_STUDIO_API_KEY=token or server.token)
    command = [*SAN, "push", "label-studio", "--input", str(labels), "--vocab", "voc20", "--project", project, *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)


def _san_versions(task: dict) -> list[str]:
    return [p["model_version"] for p in task["predictions"] if p["model_version"].startswith("san ")]


def test_push_makes_one_task_per_image_and_pushing_again_makes_none(label_studio, outputs):
    first = _push(label_studio, outputs["first"], "push-once")
    assert first.returncode == 0, first.stderr
    summary = first.stdout.strip().splitlines()[-1]
    assert "4 new tasks, 0 predictions replaced, 0 unchanged" in summary and "projects: push-once" in summary
    tasks = label_studio.tasks(label_studio.projects()["push-once"])
    rows = {r["image_uri"]: r for r in pq.read_table(outputs["first"]).to_pylist()}
    assert sorted(t["data"]["san_image_uri"] for t in tasks) == sorted(u for u, r in rows.items() if not r["error"])
    for task in tasks:
        row = rows[task["data"]["san_image_uri"]]
        (prediction,) = task["predictions"]
        version = prediction["model_version"]
        assert version.startswith("san ") and row["checkpoint_digest"][:12] in version
        assert row["taxonomy_digest"][:12] in version
        assert prediction["score"] == pytest.approx(row["mean_confidence"], rel=1e-5)
        for result, segment in zip(prediction["result"], row["segments"], strict=True):  # drawn where the labels say
            assert 0 <= result["score"] <= 1 and result["value"]["brushlabels"] == [segment["class_name"]]
            decoded = decode_rle(result["value"]["rle"]).reshape(row["height"], row["width"], 4)[:, :, 3] > 0
            assert np.array_equal(decoded, rle_to_mask(segment["rle_counts"], segment["rle_size"]))

    again = _push(label_studio, outputs["first"], "push-once")
    assert again.returncode == 0 and "0 new tasks, 0 predictions replaced, 4 unchanged" in again.stdout
    assert len(label_studio.tasks(label_studio.projects()["push-once"])) == 4


def test_a_relabeled_run_replaces_the_predictions_and_keeps_one_task_per_image(label_studio, outputs):
    assert _push(label_studio, outputs["first"], "push-relabel").returncode == 0
    project = label_studio.projects()["push-relabel"]
    tasks = label_studio.tasks(project)
    before = {t["data"]["san_image_uri"]: _san_versions(t) for t in tasks}
    # another model's prediction on one task: replaced around, never deleted
    label_studio.post("/api/predictions", {"task": tasks[0]["id"], "model_version": "their-model", "result": []})
    relabeled = _push(label_studio, outputs["finetuned"], "push-relabel")
    assert relabeled.returncode == 0, relabeled.stderr
    assert "0 new tasks, 4 predictions replaced, 0 unchanged" in relabeled.stdout
    after = {t["data"]["san_image_uri"]: _san_versions(t) for t in label_studio.tasks(project)}
    assert after.keys() == before.keys() and all(len(v) == 1 for v in after.values())  # one task, one prediction
    others = [p["model_version"] for t in label_studio.tasks(project) for p in t["predictions"]]
    assert others.count("their-model") == 1
    digest = pq.read_table(outputs["finetuned"], columns=["checkpoint_digest"])["checkpoint_digest"][0].as_py()
    assert all(digest[:12] in v[0] and v != before[uri] for uri, v in after.items())
    again = _push(label_studio, outputs["finetuned"], "push-relabel")
    assert "0 new tasks, 0 predictions replaced, 4 unchanged" in again.stdout


def test_a_push_killed_mid_way_is_finished_by_the_next_with_every_task_once(label_studio, outputs, tmp_path):
    """400 images (the four photos' rows under 100 names each, in files as the job writes them),
    pushed 5 tasks a request; SIGKILL once some are in, then the same push again."""
    many = tmp_path / "many"
    many.mkdir()
    for path in sorted(outputs["first"].glob("labels-*.parquet")):
        table = pq.read_table(path)
        labeled = table.filter(pc.is_null(table["error"]))
        for copy in range(100):
            uris = pa.array([f"{u}?copy={copy}" for u in labeled["image_uri"].to_pylist()])
            renamed = labeled.set_column(labeled.schema.get_field_index("image_uri"), "image_uri", uris)
            renamed = renamed.replace_schema_metadata(table.schema.metadata)  # the provenance stays
            pq.write_table(renamed, many / f"labels-{copy:03d}-{path.name}")
    expected = 100 * len(PHOTOS)
    env = dict(os.environ, LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token)
    command = [*SAN, "push", "label-studio", "--input", str(many), "--vocab", "voc20", "--project", "push-killed"]
    pushing = subprocess.Popen([*command, "--batch-size", "5"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        project = label_studio.projects().get("push-killed")
        count = len(label_studio.tasks(project)) if project else 0
        if count >= 20 or pushing.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    pushing.send_signal(signal.SIGKILL)
    pushing.wait()
    assert pushing.returncode == -signal.SIGKILL, pushing.stderr.read().decode()[-2000:]  # killed, not finished
    killed_at = len(label_studio.tasks(label_studio.projects()["push-killed"]))
    assert 0 < killed_at < expected
    finished = subprocess.run([*command, "--batch-size", "50"], env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    tasks = label_studio.tasks(label_studio.projects()["push-killed"])
    assert len(tasks) == expected and set(Counter(t["data"]["san_image_uri"] for t in tasks).values()) == {1}
    assert all(len(_san_versions(t)) == 1 for t in tasks)


def test_projects_are_sharded_at_max_tasks_per_project(label_studio, outputs):
    sharded = _push(label_studio, outputs["first"], "push-shards", "--max-tasks-per-project", "3")
    assert sharded.returncode == 0, sharded.stderr
    assert "projects: push-shards, push-shards-002" in sharded.stdout
    projects = label_studio.projects()
    counts = [len(label_studio.tasks(projects[t])) for t in ("push-shards", "push-shards-002")]
    assert counts == [3, 1]
    again = _push(label_studio, outputs["first"], "push-shards", "--max-tasks-per-project", "3")
    assert "0 new tasks, 0 predictions replaced, 4 unchanged" in again.stdout  # found across the shards
    assert [len(label_studio.tasks(projects[t])) for t in ("push-shards", "push-shards-002")] == [3, 1]


def test_only_the_least_confident_or_the_rows_a_condition_picks(label_studio, outputs):
    rows = [r for r in pq.read_table(outputs["first"]).to_pylist() if r["error"] is None]
    worst = max(rows, key=lambda r: (r["uncertain_fraction"], -r["mean_margin"]))
    assert _push(label_studio, outputs["first"], "push-queue", "--least-confident", "1").returncode == 0
    (task,) = label_studio.tasks(label_studio.projects()["push-queue"])
    assert task["data"]["san_image_uri"] == worst["image_uri"]
    threshold = sorted(r["mean_confidence"] for r in rows)[1]
    where = _push(label_studio, outputs["first"], "push-where", "--where", f"mean_confidence <= {threshold}")
    assert where.returncode == 0, where.stderr
    picked = {t["data"]["san_image_uri"] for t in label_studio.tasks(label_studio.projects()["push-where"])}
    assert picked == {r["image_uri"] for r in rows if r["mean_confidence"] <= threshold} and len(picked) == 2


def test_a_wrong_token_or_no_server_is_one_clear_line_and_exit_1(label_studio, outputs):
    refused = _push(label_studio, outputs["first"], "push-refused", token="not-the-token")
    assert refused.returncode == 1 and "refused the token (HTTP 401)" in refused.stderr
    assert "push-refused" not in label_studio.projects()  # nothing made
    closed = Server(f"http://127.0.0.1:{free_port()}", TOKEN)
    unreachable = _push(closed, outputs["first"], "push-nowhere")
    assert unreachable.returncode == 1 and "cannot reach Label Studio at" in unreachable.stderr
    assert "Traceback" not in refused.stderr + unreachable.stderr
