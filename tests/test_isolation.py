"""The suite leaves the machine as it found it: everything it writes lands in one sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]


def test_home_ray_and_caches_point_into_the_sandbox(sandbox: Sandbox):
    for name, value in sandbox.environment().items():
        assert os.environ[name] == value, name
    assert Path.home() == sandbox.home
    for inside in (sandbox.root, sandbox.home):
        assert not inside.is_relative_to(REPO)
        assert not inside.is_relative_to(sandbox.real_home) or sandbox.real_home == Path("/")

    from pipeline.vocabulary import DEFAULT_CACHE_DIR

    assert Path(DEFAULT_CACHE_DIR).is_relative_to(sandbox.root)


def test_ray_token_file_lands_in_the_sandbox_home(sandbox: Sandbox):
    """`ray start` turns token authentication on for good once ~/.ray/auth_token exists; the
    cluster tests make one, and it must not be the user's."""
    real_token = sandbox.real_home / ".ray" / "auth_token"
    existed = real_token.exists()
    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), "get-auth-token", "--generate"], env=dict(os.environ), check=True, capture_output=True)
    assert (sandbox.home / ".ray" / "auth_token").is_file()
    assert real_token.exists() == existed


def test_the_guard_reports_writes_outside(tmp_path):
    fake_home = tmp_path / "home"
    (fake_home / ".ray").mkdir(parents=True)
    sandbox = Sandbox(root=tmp_path / "sandbox", real_home=fake_home)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("__pycache__/\nout/\n")
    before = sandbox.snapshot_outside(repo)
    assert sandbox.changes_outside(repo, before) == []

    (fake_home / ".ray" / "auth_token").write_text("secret")
    (repo / "out").mkdir()
    (repo / "out" / "labels.parquet").write_bytes(b"x")  # ignored by git, still a write
    (repo / "__pycache__").mkdir()
    (repo / "__pycache__" / "x.pyc").write_bytes(b"x")  # interpreter output: allowed
    changes = sandbox.changes_outside(repo, before)
    assert any("home: new" in c and "auth_token" in c for c in changes)
    assert any("tree: new" in c and "out/labels.parquet" in c for c in changes)
    assert not any("__pycache__" in c for c in changes)
