"""Nothing a job started outlives its driver, even one killed with SIGKILL.

A job that starts Ray itself (no cluster to join) starts a GCS, a raylet, agents and workers. On
a normal exit `ray.shutdown` stops them; a driver killed outright (SIGKILL, the OOM killer, a
scheduler's timeout) cannot, and they stay behind holding memory and ports, night after night.
Before Ray starts, the driver marks its environment with a token that every process it starts
inherits, and starts this small watcher in a session of its own. While the driver lives, the
watcher notes every second the processes carrying the token and those below them. When the
driver is gone, it waits a moment for an orderly shutdown to finish, then kills every process
still carrying the token or below one, and every process it noted that still runs. Processes of
a cluster the job merely joined never carry it.

Standard library only: it runs as `python pipeline/reaper.py PID TOKEN`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

MARKER = "SAN_LABELER_DRIVER"
GRACE_S = 3.0  # after the driver exits, before its leftovers are killed
WATCH_INTERVAL_S = 1.0  # how often the watcher notes the processes of the run while the driver lives
REAPER = Path(__file__).resolve()


def start_reaper() -> None:
    """Mark this process's environment (inherited by everything it starts from now on) and start
    the watcher. Call once, before Ray starts."""
    if os.environ.get(MARKER, "").startswith(f"{os.getpid()}-"):
        return  # started already; a token inherited from a parent process is replaced by our own
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    environment = dict(os.environ)
    # Last in the environment children inherit: Ray's agents retitle themselves over its start.
    os.environ.pop(MARKER, None)
    os.environ[MARKER] = token
    subprocess.Popen(
        [sys.executable, str(REAPER), str(os.getpid()), token],
        env=environment,  # the watcher itself does not carry the token
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the driver's process group does not reach it
    )


def wait_for_exit(pid: int, timeout_s: float | None = None) -> bool:
    """Whether the process has exited, waiting at most `timeout_s` (None: until it has)."""
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or already gone
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while _alive(pid):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
        return True
    try:
        readable, _, _ = select.select([handle], [], [], timeout_s)  # readable once it has exited
        return bool(readable)
    finally:
        os.close(handle)


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid)


def pids_with_env(name: str, value: str) -> list[int]:
    """Every other process whose environment holds name=value (the ones this user may read)."""
    found = []
    for process in psutil.process_iter(["environ"]):
        environment = process.info["environ"]  # None where another user's
        if process.pid != os.getpid() and environment and environment.get(name) == value:
            found.append(process.pid)
    return found


def with_descendants(pids: list[int]) -> list[int]:
    """These processes and every process below them (by parent pid). Some of Ray's agents retitle
    themselves over their environment, where the token may sit; they are found as children of
    the raylet, which carries it."""
    children: dict[int, list[int]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process.pid)
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    found.discard(os.getpid())
    return sorted(found)


def _start_time_if_live(pid: int) -> float | None:
    """The process's start time (which tells it from a later process given the same pid), or None
    when it is gone or a zombie."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:  # gone, or another user's
        return None


def process_tree(name: str, value: str) -> dict[int, float]:
    """The live processes whose environment holds name=value and every live process below them,
    each with its start time."""
    found = {}
    for pid in with_descendants(pids_with_env(name, value)):
        if (started := _start_time_if_live(pid)) is not None:
            found[pid] = started
    return found


def run_processes(token: str) -> dict[int, float]:
    """The live processes of the run now: those carrying the token and everything below them."""
    return process_tree(MARKER, token)


def watch(pid: int, token: str, interval_s: float = WATCH_INTERVAL_S) -> dict[int, float]:
    """Wait for the driver to exit, noting the processes of its run as it goes. A retitled agent
    is found only below the raylet; should the raylet stop on its own before the watcher's last
    look (it may, once the driver is gone), the agent is reparented and would be lost but for
    this record."""
    seen: dict[int, float] = {}
    while not wait_for_exit(pid, interval_s):
        seen.update(run_processes(token))
    return seen


def reap(token: str, seen: dict[int, float] | None = None, timeout_s: float = 30.0, quiet_s: float = 3.0) -> None:
    """Kill every live process of the run (see `run_processes`) and every process in `seen`
    still running under the same start time, until none has been found for `quiet_s` (a process a
    dying parent was still starting shows up a moment later) or `timeout_s` has passed."""
    seen = seen or {}
    deadline = time.monotonic() + timeout_s
    last_seen = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_seen < quiet_s:
        targets = set(run_processes(token))
        targets.update(pid for pid, started in seen.items() if _start_time_if_live(pid) == started)
        for pid in targets:
            last_seen = time.monotonic()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def main(argv: list[str]) -> None:
    pid, token = int(argv[0]), argv[1]
    seen = watch(pid, token)
    time.sleep(GRACE_S)
    reap(token, seen)


if __name__ == "__main__":
    main(sys.argv[1:])
