"""Progress of a labeling run, as a line at a fixed interval that a log file keeps:

    labeling: 1,200/10,000 (12%) after 6m05s, 3.40 images/s, 7 errors (UnidentifiedImageError 5, OSError 2),
    about 43m08s left

The labeling actors add each batch's counts to one `ProgressCounter` actor; a thread in the driver
reads it every interval. Rates are over the last interval, so start-up does not dilute them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def error_kind(error: str) -> str:
    """`cannot load image: UnidentifiedImageError: ...` -> `UnidentifiedImageError`."""
    parts = error.split(": ")
    return parts[1] if len(parts) > 2 else parts[0]


def peak_rss_mib() -> float:
    """This process's own peak resident memory so far. Linux's VmHWM; not getrusage's ru_maxrss,
    which a process started by exec inherits from its parent (a Ray worker, the raylet's)."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration):  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ProgressCounter:
    """Ray actor (no CPU): images done, errors by kind and the largest peak memory of any labeling
    actor, added to by every labeling actor after each batch."""

    def __init__(self) -> None:
        self.done = 0
        self.errors: Counter[str] = Counter()
        self.actor_peak_rss_mib = 0.0

    def add(self, done: int, errors: list[str], peak_rss_mib: float = 0.0) -> None:
        self.done += done
        self.errors.update(error_kind(e) for e in errors)
        self.actor_peak_rss_mib = max(self.actor_peak_rss_mib, peak_rss_mib)

    def snapshot(self) -> tuple[int, dict[str, int]]:
        return self.done, dict(self.errors)

    def peak_memory(self) -> float:
        return self.actor_peak_rss_mib


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(done: int, total: int, errors: dict[str, int], rate: float, elapsed_s: float) -> str:
    line = (
        f"labeling: {done:,}/{total:,} ({done / max(total, 1):.0%}) after {_duration(elapsed_s)}, {rate:.2f} images/s"
    )
    if errors:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(errors.items(), key=lambda kv: -kv[1]))
        line += f", {sum(errors.values()):,} errors ({kinds})"
    if rate > 0 and done < total:
        line += f", about {_duration((total - done) / rate)} left"
    return line


class ProgressReporter:
    """A driver thread that logs `progress_line` every `interval_s` while the stream runs."""

    def __init__(self, counter: Any, total: int, interval_s: float) -> None:
        self.counter, self.total, self.interval_s = counter, total, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labeling-progress", daemon=True)

    def __enter__(self) -> ProgressReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import ray

        started = last_time = time.monotonic()
        last_done = 0
        while not self._stop.wait(self.interval_s):
            try:
                done, errors = ray.get(self.counter.snapshot.remote(), timeout=self.interval_s)
            except Exception:  # a slow answer skips one line; the run goes on
                continue
            now = time.monotonic()
            rate = (done - last_done) / max(now - last_time, 1e-9)
            last_done, last_time = done, now
            log.info("%s", progress_line(done, self.total, errors, rate, now - started))
