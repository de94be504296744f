"""Shared fixtures: the parity fixture directory, a tiny SAN, and a real S3 API server (moto)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from schemas.model_config import SanModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = REPO_ROOT.parent / "shared" / "parity"


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    tiny = PARITY_DIR / "tiny_a"
    if not (tiny / "expected.pth").exists():
        pytest.fail(f"parity fixtures missing: expected them at {tiny} (../shared beside the repo)")
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 API server on 127.0.0.1; s3fs finds it through the standard AWS variables."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
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
