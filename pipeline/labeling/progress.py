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
    """Ray actor (no CPU): images done, errors by kind, when the first and the latest batch were
    done, and the largest peak memory of any labeling actor, added to by every labeling actor
    after each batch."""

    def __init__(self) -> None:
        self.done = 0
        self.errors: Counter[str] = Counter()
        self.actor_peak_rss_mib = 0.0
        self.first_batch: tuple[float, int] | None = None  # (wall time, images in it)
        self.last_batch_at: float | None = None

    def add(self, done: int, errors: list[str], peak_rss_mib: float = 0.0) -> None:
        now = time.time()
        if self.first_batch is None:
            self.first_batch = (now, done)
        self.last_batch_at = now
        self.done += done
        self.errors.update(error_kind(e) for e in errors)
        self.actor_peak_rss_mib = max(self.actor_peak_rss_mib, peak_rss_mib)

    def snapshot(self) -> tuple[int, dict[str, int]]:
        return self.done, dict(self.errors)

    def peak_memory(self) -> float:
        return self.actor_peak_rss_mib

    def timing(self, stream_started_at: float) -> dict[str, float | None]:
        """Start-up (stream start to the first finished batch: actors loading, first images
        through) apart from the steady state (images after the first batch over the time since)."""
        if self.first_batch is None or self.last_batch_at is None:
            return {"startup_s": None, "steady_images_per_s": None}
        first_at, first_count = self.first_batch
        span = self.last_batch_at - first_at
        steady = (self.done - first_count) / span if span > 0 and self.done > first_count else None
        return {"startup_s": round(first_at - stream_started_at, 3), "steady_images_per_s": steady and round(steady, 3)}


class LabelingMetrics:
    """Ray metrics of the labeling actors, for the Ray dashboard and Prometheus while a job runs:
    `san_images` (by outcome), `san_image_errors` (by error and kind) and `san_batch_seconds`."""

    def __init__(self, model_id: str) -> None:
        from ray.util import metrics

        self.tags = {"model": model_id}
        self.images = metrics.Counter(
            "san_images", description="images finished by the labeling actors", tag_keys=("model", "outcome")
        )
        self.errors = metrics.Counter(
            "san_image_errors", description="error rows by error and kind", tag_keys=("model", "error", "kind")
        )
        self.batch_seconds = metrics.Histogram(
            "san_batch_seconds",
            description="seconds a labeling actor takes per batch",
            boundaries=[0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
            tag_keys=("model",),
        )

    def record(self, seconds: float, labeled: int, errors: list[tuple[str, str | None]]) -> None:
        self.batch_seconds.observe(seconds, tags=self.tags)
        if labeled:
            self.images.inc(labeled, tags={**self.tags, "outcome": "labeled"})
        if errors:
            self.images.inc(len(errors), tags={**self.tags, "outcome": "error"})
        for message, kind in errors:
            self.errors.inc(1, tags={**self.tags, "error": error_kind(message), "kind": kind or "unknown"})


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
