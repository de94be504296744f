"""Find, kill and wait for the processes of one run, by an environment variable they all inherit.

A driver started with its own RAY_TMPDIR hands it to the Ray it starts (GCS, raylet, workers,
agents), so that value names every process of the run, whoever their parent is now.
"""

from __future__ import annotations

import os
import signal
import time

from pipeline.reaper import pids_with_env, process_tree  # the scans the job's own watcher makes

__all__ = ["kill_run", "pids_with_env"]


def kill_run(name: str, value: str, timeout_s: float = 60) -> None:
    """SIGKILL every process of the run and every process below one (as a machine failure would),
    and wait until all are gone. Unlike `ray stop`, it leaves every other Ray on the machine be."""
    deadline = time.monotonic() + timeout_s
    while pids := list(process_tree(name, value)):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of the run still alive after {timeout_s}s: {pids}")
        time.sleep(0.1)
