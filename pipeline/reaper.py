"""Nothing a job started outlives its driver, even one killed with SIGKILL.

A job that starts Ray itself (no cluster to join) starts a GCS, a raylet, agents and workers. On
a normal exit `ray.shutdown` stops them; a driver killed outright (SIGKILL, the OOM killer, a
scheduler's timeout) cannot, and they stay behind holding memory and ports, night after night.
Before Ray starts, the driver marks its environment with a token that every process it starts
inherits, and starts this small watcher in a session of its own. When the driver is gone, the
watcher waits a moment for an orderly shutdown to finish, then kills every process still carrying
the token. Processes of a cluster the job merely joined never carry it.

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

MARKER = "SAN_LABELER_DRIVER"
GRACE_S = 3.0  # after the driver exits, before its leftovers are killed


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
        [sys.executable, str(Path(__file__).resolve()), str(os.getpid()), token],
        env=environment,  # the watcher itself does not carry the token
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the driver's process group does not reach it
    )


def wait_for_exit(pid: int) -> None:
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or already gone
        while _alive(pid):
            time.sleep(0.5)
        return
    try:
        select.select([handle], [], [])  # readable once the process has exited
    finally:
        os.close(handle)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pids_with_env(name: str, value: str) -> list[int]:
    """Every other process whose environment holds name=value (the ones this user may read)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    return found


def with_descendants(pids: list[int]) -> list[int]:
    """These processes and every process below them (by parent pid in /proc/PID/stat). Some of
    Ray's agents retitle themselves over the start of their environment, where the token may sit;
    they are found as children of the raylet, which carries it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # after "(comm)", which may hold spaces
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    found.discard(os.getpid())
    return sorted(found)


def reap(token: str, timeout_s: float = 30.0, quiet_s: float = 3.0) -> None:
    """Kill every process carrying the token, and everything they started, until none has been
    seen for `quiet_s` (a process a dying parent was still starting shows up a moment later) or
    `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    last_seen = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_seen < quiet_s:
        for pid in with_descendants(pids_with_env(MARKER, token)):
            last_seen = time.monotonic()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def main(argv: list[str]) -> None:
    pid, token = int(argv[0]), argv[1]
    wait_for_exit(pid)
    time.sleep(GRACE_S)
    reap(token)


if __name__ == "__main__":
    main(sys.argv[1:])
