"""Whole-job failures stop before any work, with a clear message and a non-zero exit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from jobs.label import main as label_main

pytestmark = pytest.mark.usefixtures("no_ray_session")


def _local(tmp_path: Path, *weights: str) -> list[str]:
    """Arguments for an empty local input folder and a local output, plus the given weights."""
    (tmp_path / "images").mkdir(exist_ok=True)
    return ["--vocab", "voc20", "--input", str(tmp_path / "images"), "--output", str(tmp_path / "o"), *weights]


def _run(capsys, args: list[str]) -> tuple[int, str]:
    rc = label_main(args)
    assert not ray.is_initialized()  # nothing started
    return rc, capsys.readouterr().err


def test_invalid_taxonomy_exits_2_before_ray(tmp_path, capsys, tiny_weights):
    vocab = tmp_path / "taxonomy.yaml"
    vocab.write_text("name: t\nclasses:\n  - {id: 1, name: road, colour: red}\n")
    rc, err = _run(
        capsys,
        ["--vocab", str(vocab), "--input", str(tmp_path), "--output", str(tmp_path / "o"), *tiny_weights],
    )
    assert rc == 2
    assert f"{vocab}: classes[0].colour (line 3): unknown key 'colour'" in err


def test_bad_flags_exit_2(tmp_path, capsys):
    rc, err = _run(capsys, ["--vocab", "voc20", "--input", "x", "--output", "y", "--concurrency", "3,1"])
    assert rc == 2 and "need 1 <= MIN <= MAX" in err


def test_missing_local_input(tmp_path, capsys, tiny_weights):
    rc, err = _run(
        capsys,
        [
            "--vocab",
            "voc20",
            "--input",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "o"),
            *tiny_weights,
        ],
    )
    assert rc == 1 and "no such file, directory or prefix" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_missing_bucket(s3_server, capsys, tiny_weights, tmp_path):
    rc, err = _run(
        capsys,
        [
            "--vocab",
            "voc20",
            "--input",
            "s3://no-such-bucket/images/",
            "--output",
            str(tmp_path / "o"),
            *tiny_weights,
        ],
    )
    assert rc == 1 and "the bucket 'no-such-bucket' does not exist" in err


def test_unwritable_output(tmp_path, capsys, tiny_weights):
    (tmp_path / "images").mkdir()
    (tmp_path / "blocker").write_text("a file where the output directory should be")
    rc, err = _run(
        capsys,
        [
            "--vocab",
            "voc20",
            "--input",
            str(tmp_path / "images"),
            "--output",
            str(tmp_path / "blocker" / "out"),
            *tiny_weights,
        ],
    )
    assert rc == 1 and "cannot write to" in err


def test_missing_checkpoint(tmp_path, capsys):
    rc, err = _run(capsys, _local(tmp_path, "--checkpoint", str(tmp_path / "missing.pth")))
    assert rc == 1 and "checkpoint not found" in err


def test_preset_without_weights_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    rc, err = _run(capsys, _local(tmp_path, "--model", "san-vit-b16"))
    assert rc == 1 and "san_vit_b_16.pth" in err and "--checkpoint" in err


@pytest.fixture()
def authenticating_s3():
    """A second moto S3 server that checks credentials (none are valid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_bad_credentials(authenticating_s3, capsys, tiny_weights, tmp_path, monkeypatch):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses clients made with the other server's settings
    monkeypatch.setenv("AWS_ENDPOINT_URL", authenticating_s3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    rc, err = _run(
        capsys,
        ["--vocab", "voc20", "--input", "s3://photos/in/", "--output", str(tmp_path / "o"), *tiny_weights],
    )
    s3fs.S3FileSystem.clear_instance_cache()
    assert rc == 1 and "access denied, check the credentials" in err
