"""The watcher that outlives a SIGKILLed driver kills what the driver started: every process
carrying the driver's token, and every process below those (Ray's agents retitle themselves over
the start of their environment, so the token cannot be relied on in them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from pipeline.reaper import MARKER, REAPER, pids_with_env, reap, with_descendants


def _gone(pid: int, timeout_s: float) -> bool:
    """Whether the process is gone (or a zombie awaiting collection) within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[-1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def _kill(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_a_tokened_process_and_the_untokened_children_it_started_are_killed():
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    # a parent with the token starts a child whose environment lacks it, then both sleep
    script = (
        "import os, subprocess, sys, time\n"
        f"env = {{k: v for k, v in os.environ.items() if k != {MARKER!r}}}\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], env=env)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], env=dict(os.environ, **{MARKER: token}), stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    try:
        assert pids_with_env(MARKER, token) == [parent.pid]  # the child is invisible to the token scan
        assert with_descendants([parent.pid]) == sorted([parent.pid, child])
        started = time.monotonic()
        reap(token, timeout_s=20, quiet_s=1)
        assert time.monotonic() - started < 10
        assert parent.wait(timeout=5) == -9
        assert _gone(child, timeout_s=10)
    finally:
        _kill(parent.pid, child)


def test_an_untokened_process_orphaned_before_the_driver_died_is_still_killed():
    """The race seen on CI: the raylet (tokened) stops on its own when the driver dies, before the
    watcher looks; its agent (whose token the retitle overwrote) is reparented and no scan of the
    moment finds it. The watcher's record from while the driver lived does."""
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    raylet = (
        "import os, subprocess, sys, time\n"
        f"env = {{k: v for k, v in os.environ.items() if k != {MARKER!r}}}\n"
        "agent = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], env=env)\n"
        "print(agent.pid, flush=True)\n"
        "driver = os.getppid()\n"
        "while os.getppid() == driver: time.sleep(0.05)\n"  # stops the moment the driver is gone
    )
    driver_script = (
        "import subprocess, sys, time\n"
        f"raylet = subprocess.Popen([sys.executable, '-c', {raylet!r}])\n"
        "print(raylet.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-u", "-c", driver_script],
        env=dict(os.environ, **{MARKER: token}),
        stdout=subprocess.PIPE,
        text=True,
    )
    raylet_pid, agent = int(driver.stdout.readline()), int(driver.stdout.readline())
    watcher = subprocess.Popen([sys.executable, str(REAPER), str(driver.pid), token])
    try:
        time.sleep(2.5)  # the watcher has looked at the run at least once
        os.kill(driver.pid, 9)
        driver.wait(timeout=5)
        assert _gone(raylet_pid, timeout_s=5)  # on its own, before the watcher's grace is over
        assert agent not in with_descendants(pids_with_env(MARKER, token))  # no scan now finds it
        assert watcher.wait(timeout=30) == 0
        assert _gone(agent, timeout_s=5)
    finally:
        _kill(driver.pid, raylet_pid, agent, watcher.pid)
