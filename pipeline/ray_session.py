"""The Ray session a job runs in (`ray_for_job`: the Ray this process runs, else the cluster it
joins or starts; `init_ray`), and logging, set up once per process: the driver when a job starts,
and every Ray worker of the job through Ray's `worker_process_setup_hook`. The project's loggers
(`jobs`, `pipeline`, `san_core`, `schemas`) print at the chosen level: INFO and below to stdout,
warnings and errors to stderr with their level in front. Everything else (Ray, Ray Data,
urllib3, ...) prints only warnings, and Ray's progress bars appear only on a terminal, so a log
file gets no escape codes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .reaper import start_reaper

PROJECT_LOGGERS = ("jobs", "pipeline", "san_core", "schemas")
_HANDLER_NAME = "san-labeler"


class _LevelPrefix(logging.Formatter):
    def __init__(self, with_time: bool) -> None:
        super().__init__("%(asctime)s %(message)s" if with_time else "%(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return text


class _CurrentStream(logging.StreamHandler):
    """Writes to whatever sys.stdout / sys.stderr is at the time (Ray and pytest replace them)."""

    def __init__(self, stream_name: str) -> None:
        self._stream_name = stream_name
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def log_summary(logger: logging.Logger, message: str) -> None:
    """A job's one-line summary, printed at every level (`-q` keeps it: a scheduler's log shows it
    last): an INFO record handed to the handlers whatever the logger's level."""
    logger.handle(logger.makeRecord(logger.name, logging.INFO, "(summary)", 0, message, None, None))


def configure_logging(level: str | int = "INFO") -> None:
    """Idempotent: a second call only changes the level."""
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    formatter = _LevelPrefix(with_time=numeric <= logging.DEBUG)
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(numeric)
        logger.propagate = False
        for handler in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
            logger.removeHandler(handler)
        out = _CurrentStream("stdout")
        out.addFilter(_Below(logging.WARNING))
        err = _CurrentStream("stderr")
        err.setLevel(logging.WARNING)
        for handler in (out, err):
            handler.set_name(_HANDLER_NAME)
            handler.setFormatter(formatter)
            logger.addHandler(handler)


def quiet_ray_libraries(verbose: bool, terminal: bool) -> None:
    """Ray Data and Ray Train as a job's user wants them: progress bars only on a terminal, their
    INFO chatter and Ray's own deprecation warnings (about Ray's internal calls) only with -v."""
    import warnings

    from ray.util.debug import log_once

    if not terminal:
        os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
        log_once("ray_data_progress_manager_disabled")  # "Progress bars disabled": we know, on purpose
    if not verbose:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
        _quiet_ray_loggers()
        warnings.filterwarnings("ignore", module=r"ray\.")


def _quiet_ray_loggers() -> None:
    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _not_token_notice(record: logging.LogRecord) -> bool:
    # Said on every local start, and not the user's business when Ray is started in-process.
    return "Token authentication is enabled" not in record.getMessage()


def worker_setup_hook(level: str) -> Callable[[], None]:
    """What every Ray worker of the job runs first: the driver's logging, at the driver's level."""

    def setup_worker_logging() -> None:
        configure_logging(level)
        quiet_ray_libraries(verbose=logging.getLevelName(level) <= logging.DEBUG, terminal=False)

    return setup_worker_logging


def init_ray(level: str = "INFO", dashboard: bool = False, **init_kwargs: Any) -> None:
    """`ray.init` for a job: workers log as this process does, Ray itself speaks up only for
    warnings (all of it with -v), progress bars only on a terminal.

    A Ray this starts has no dashboard unless `dashboard`: it lives only as long as the job, and
    the dashboard is ten more processes at every start, whose start `ray.init` waits on (a
    minute when one of its modules fails to come up). Joining a cluster, `dashboard` changes
    nothing: the cluster's head runs its own. The metrics agent runs either way."""
    import ray

    verbose = logging.getLevelName(level) <= logging.DEBUG
    terminal = sys.stdout.isatty()
    quiet_ray_libraries(verbose, terminal)
    if not verbose:
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_not_token_notice)
    start_reaper()  # a Ray this process starts dies with it, even on SIGKILL
    ray.init(
        logging_level=logging.INFO if verbose else logging.WARNING,
        runtime_env={"worker_process_setup_hook": worker_setup_hook(level)},
        include_dashboard=dashboard,
        **init_kwargs,
    )
    ray.data.DataContext.get_current().enable_progress_bars = terminal
    if not verbose:
        _quiet_ray_loggers()  # ray.init set Ray's logging up anew


@contextmanager
def ray_for_job(level: str = "INFO", dashboard: bool = False, **init_kwargs: Any) -> Iterator[bool]:
    """The Ray a job runs on. A Ray this process already runs (a notebook's, an application's) is
    joined as it is and left running; `ray.init` would refuse a second start. Otherwise the
    job starts one with `init_ray` (or joins RAY_ADDRESS's cluster) and shuts it down when it
    ends. Yields whether this job started it."""
    import ray

    if ray.is_initialized():
        yield False
        return
    init_ray(level, dashboard, **init_kwargs)
    try:
        yield True
    finally:
        ray.shutdown()


def ray_train_log_level(level: str) -> str:
    """Ray Train's own console level for a job run at `level`: its INFO lines only with -v."""
    return "DEBUG" if logging.getLevelName(level) <= logging.DEBUG else "WARNING"
