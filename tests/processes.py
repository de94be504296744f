"""Find, kill and wait for the processes of one run, by an environment variable they all inherit.

A driver started with its own RAY_TMPDIR hands it to the Ray it starts (GCS, raylet, workers,
agents), so that value names every process of the run, whoever their parent is now.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def pids_with_env(name: str, value: str) -> list[int]:
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        if wanted in environ:
            found.append(int(entry.name))
    return found


def kill_run(name: str, value: str, timeout_s: float = 60) -> None:
    """SIGKILL every process of the run (as a machine failure would) and wait until all are gone."""
    deadline = time.monotonic() + timeout_s
    while pids := pids_with_env(name, value):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of the run still alive after {timeout_s}s: {pids}")
        time.sleep(0.1)
