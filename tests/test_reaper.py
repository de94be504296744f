"""The watcher that outlives a SIGKILLed driver kills what the driver started: every process
carrying the driver's token, and every process below those (Ray's agents retitle themselves over
the start of their environment, so the token cannot be relied on in them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from pipeline.reaper import MARKER, pids_with_env, reap, with_descendants


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
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
            state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[-1].split()[0]
            if state == "Z":  # killed; waiting for init to collect it
                break
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{child}") or state == "Z"
    finally:
        for pid in (parent.pid, child):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
