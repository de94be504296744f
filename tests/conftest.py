"""Shared fixtures: a sandboxed home for the whole session, the vendored parity fixtures, a tiny
SAN, and a real S3 API server (moto).

Tests leave the machine as they found it. Before anything is imported, HOME, Ray's temp dir,
the vocabulary cache and the Hugging Face cache are pointed into one temporary sandbox, so
`ray start` writes its token file there and not into the user's ~/.ray. At the end of the session
`sandbox_guard` compares the real home and the working tree with what they were at the start and
fails the run if a test wrote there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sandbox import Sandbox

# Before any project or Ray import: module-level defaults (e.g. the vocabulary cache) read these.
SANDBOX = Sandbox.create(Path(tempfile.mkdtemp(prefix="san-t-")))
SANDBOX.activate(os.environ)
# Triton fixes at import whether @triton.jit kernels compile for a GPU or run in its interpreter,
# and torch imports Triton early (torch._dynamo, through open_clip): set before torch is imported.
# The suite runs without a GPU, so the fused label-map kernel is tested in the interpreter.
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from schemas.model_config import SanModelConfig  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(__file__).resolve().parent / "fixtures" / "parity"
_BEFORE = SANDBOX.snapshot_outside(REPO_ROOT)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import ray

    ray.shutdown()  # the shared one (see `ray_session`), if a test left it up
    changes = SANDBOX.changes_outside(REPO_ROOT, _BEFORE)
    if changes:
        print("\ntests wrote outside their sandbox:\n  " + "\n  ".join(changes))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(SANDBOX.root, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    return SANDBOX


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    tiny = PARITY_DIR / "tiny_a"
    if not (tiny / "expected.pth").exists():
        pytest.fail(f"parity fixtures missing: expected them at {tiny} (they are part of the repository)")
    return PARITY_DIR


@pytest.fixture(scope="session")
def tiny_weights(parity_dir: Path) -> list[str]:
    """Job flags that load the parity fixture's tiny model."""
    tiny = parity_dir / "tiny_a"
    return ["--checkpoint", str(tiny / "checkpoint.pth"), "--model-config", str(tiny / "config.json")]


@pytest.fixture(scope="session")
def tiny_config(parity_dir: Path) -> SanModelConfig:
    return SanModelConfig.from_json_file(parity_dir / "tiny_a" / "config.json")


@pytest.fixture(scope="session")
def tiny_inputs(parity_dir: Path) -> dict:
    return torch.load(parity_dir / "tiny_a" / "inputs.pth", weights_only=True)


@pytest.fixture(scope="session")
def tiny_expected(parity_dir: Path) -> dict:
    return torch.load(parity_dir / "tiny_a" / "expected.pth", weights_only=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 API server on 127.0.0.1; s3fs finds it through the standard AWS variables."""
    from moto.server import ThreadedMotoServer

    # port 0: the server binds whatever port is free, so no other process can take it first
    # (and a port taken first would leave `start` waiting forever for a server that failed)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    _, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server: str) -> Iterator[str]:
    """A fresh, empty bucket; yields its s3:// URI."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield f"s3://{name}"
    fs.rm(name, recursive=True)


@pytest.fixture(scope="module")
def ray_session(s3_server: str) -> Iterator[None]:
    """A Ray in this process, started by the first module that asks and left up for the next: a
    job run in-process joins it as it would a notebook's (`pipeline.ray_session.ray_for_job`) instead
    of starting and stopping its own, about a third of a small job's CPU. Started after the S3
    server's variables are set, since its workers keep the environment they started with. A job
    runs the same either way, so no result depends on it; a test that needs its own Ray or none
    asks for `no_ray_session`, and the tests after it in its module start their own again."""
    import ray

    from pipeline.ray_session import init_ray

    if not ray.is_initialized():
        init_ray("INFO")
    yield


@pytest.fixture()
def no_ray_session() -> None:
    """No Ray in this process: for a test that starts its own or checks that nothing started one."""
    import ray

    ray.shutdown()
