"""A real Label Studio server on 127.0.0.1, for the push tests and the push benchmark: the
`label-studio` package from its own virtualenv (`make .venv-label-studio`), a fresh database in
a folder of the caller's, one preset user whose legacy API token the caller names."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

LABEL_STUDIO = Path(__file__).resolve().parents[1] / ".venv-label-studio" / "bin" / "label-studio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def label_studio_server(
    data: Path,
    token: str,
    while_booting: Callable[[], object] | None = None,
    env: Mapping[str, str] | None = None,
    boot_timeout_s: float = 300,
) -> Iterator[str]:
    """Start the server with its data (and log, `server.log`) in `data`, call `while_booting`
    (work to overlap with its start, a minute here), wait until it answers, and yield its URL;
    stopped afterwards with its whole process group."""
    assert LABEL_STUDIO.exists(), f"{LABEL_STUDIO} is missing: `make .venv-label-studio` installs Label Studio there"
    port = free_port()
    environment = dict(
        env if env is not None else os.environ,
        LABEL_STUDIO_BASE_DATA_DIR=str(data),
        LABEL_STUDIO_USERNAME="reviewer@example.com",
        LABEL_STUDIO_PASSWORD="a-long-test-password",
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
    )
    log = (data / "server.log").open("w")
    server = subprocess.Popen(
        [str(LABEL_STUDIO), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port)],
        env=environment, cwd=data, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if while_booting is not None:
            while_booting()
        deadline = time.monotonic() + boot_timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None, (data / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (data / "server.log").read_text()[-3000:]
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
