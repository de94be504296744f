"""One run at a time per labels folder: a lease that a crashed run cannot hold forever.

    with store.lease(run_id, seconds=120) as lease:   # OutputBusy: another run holds the folder
        plan, label ...
        lease.check()                                 # LeaseLost: another run took it over
        commit ...

The lease is the newest of the folder's `_lease/<generation>.json` files (`LeaseRecord`). A run
takes the folder by creating the next generation's file *exclusively*, so that of two runs racing
for one generation exactly one succeeds: on local disk a complete temporary file is hard-linked
to the name (link fails if the name exists), on S3 the PUT carries `If-None-Match: *`. It may try
only when there is no lease, or the newest is past its expiry or held by a process of this host
that no longer exists (a SIGKILLed run on the same machine frees the folder at once). While it
runs, a thread renews the expiry every quarter of the lease and checks the lease is still its
own: a newer generation, or its own file gone, means the run stalled past its expiry and was
taken over. A run that finishes (or fails) removes its lease file.

Expiry times are UTC from the holder's clock: hosts whose clocks disagree by more than a small
fraction of the lease should not share an output. On other storage than local disk and S3,
fsspec's `mode="create"` is used, which some backends only approximate (a check, then a write).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import uuid
from datetime import datetime, timedelta, timezone
from types import TracebackType

import fsspec
import psutil

from schemas.output import LeaseRecord

from .layout import LEASE_DIR

log = logging.getLogger(__name__)

_GENERATION_FILE = re.compile(r"^(\d{10})\.json$")


class OutputBusy(Exception):
    """Another run holds the labels folder. Nothing was read or written."""

    def __init__(self, url: str, holder: LeaseRecord) -> None:
        self.url, self.holder = url, holder
        super().__init__(
            f"{url} is held by run {holder.run_id} (host {holder.host}, pid {holder.pid}, since "
            f"{holder.acquired_at:%Y-%m-%d %H:%M:%S} UTC; its lease runs to {holder.expires_at:%H:%M:%S} UTC and is "
            "renewed while it runs). This run stopped without touching the output. A crashed run's lease "
            "lapses when it expires, or at once for a run of this host whose process is gone"
        )


class LeaseLost(Exception):
    """This run's lease expired unrenewed and another run took the folder over."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _process_gone(pid: int, started: float) -> bool:
    """No process `pid` started at `started` runs on this host (a reused pid has another start)."""
    try:
        return abs(psutil.Process(pid).create_time() - started) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


class Lease:
    """A run's hold on a labels folder; see the module docstring."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str, run_id: str, seconds: float) -> None:
        self.fs, self.url, self.run_id, self.seconds = fs, url, run_id, seconds
        self.folder = f"{root}/{LEASE_DIR}"
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self.local = "file" in protocols or "local" in protocols
        self.record: LeaseRecord | None = None
        self.lost: str | None = None  # why the lease was lost, once it was
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- the folder's leases

    def _path(self, generation: int) -> str:
        return f"{self.folder}/{generation:010d}.json"

    def _generations(self) -> list[int]:
        self.fs.invalidate_cache(self.folder)
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.folder, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_GENERATION_FILE.match, names) if m)

    def _read(self, generation: int) -> LeaseRecord | None:
        """The lease of a generation; None if it is gone or not a lease (never ours: ours are
        written whole), which leaves the folder free."""
        try:
            return LeaseRecord.model_validate_json(self.fs.cat_file(self._path(generation)))
        except FileNotFoundError:
            return None
        except ValueError as e:
            log.warning("%s is not a lease (%s); treating the folder as free", self._path(generation), e)
            return None

    def _is_stale(self, record: LeaseRecord) -> bool:
        if record.released or record.expires_at <= _now():
            return True
        return record.host == socket.gethostname() and _process_gone(record.pid, record.process_started)

    def _written_aside(self, data: bytes) -> str:
        """A local file of `data` in the lease folder, under a name no reader takes for a lease."""
        temporary = f"{self.folder}/.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as f:
            f.write(data)
        return temporary

    def _create(self, record: LeaseRecord) -> None:
        """Write the record under its generation's name only if no file has that name (else
        FileExistsError)."""
        path, data = self._path(record.generation), record.model_dump_json(indent=2).encode()
        if self.local:
            os.makedirs(self.folder, exist_ok=True)
            temporary = self._written_aside(data)
            try:
                os.link(temporary, path)  # atomic, and fails if the name exists
            finally:
                os.unlink(temporary)
        else:
            self.fs.pipe_file(path, data, mode="create")  # S3: PutObject with If-None-Match: *

    def _rewrite(self, record: LeaseRecord) -> None:
        path, data = self._path(record.generation), record.model_dump_json(indent=2).encode()
        if self.local:
            os.replace(self._written_aside(data), path)  # a reader sees the old lease or the new, whole
        else:
            self.fs.pipe_file(path, data)

    # -- holding it

    def acquire(self) -> None:
        """Take the folder, or raise OutputBusy naming the run that holds it."""
        process = psutil.Process()
        for _ in range(8):  # each retry follows a run that created the generation we wanted
            generations = self._generations()
            newest = self._read(generations[-1]) if generations else None
            if newest is not None and not self._is_stale(newest):
                raise OutputBusy(self.url, newest)
            now = _now()
            record = LeaseRecord(
                generation=(generations[-1] if generations else 0) + 1,
                run_id=self.run_id,
                host=socket.gethostname(),
                pid=process.pid,
                process_started=process.create_time(),
                acquired_at=now,
                expires_at=now + timedelta(seconds=self.seconds),
            )
            try:
                self._create(record)
            except FileExistsError:
                continue  # another run took that generation first: look again
            if newest is not None:
                log.info(
                    "took over %s from run %s (%s)", self.url, newest.run_id,
                    "released" if newest.released else "its lease had lapsed",
                )  # fmt: skip
            self.record = record
            for older in generations:  # the newest generation is the lease; older ones are history
                self.fs.rm_file(self._path(older))
            self._renewer = threading.Thread(target=self._renew_until_stopped, name="san-lease", daemon=True)
            self._renewer.start()
            return
        raise OutputBusy(self.url, self._read(self._generations()[-1]) or record)

    def _newer(self) -> LeaseRecord | None:
        assert self.record is not None
        generations = [g for g in self._generations() if g > self.record.generation]
        return self._read(generations[-1]) if generations else None

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                if not self._still_ours():
                    newer = self._newer()
                    by = f"run {newer.run_id} (host {newer.host}, pid {newer.pid})" if newer else "another run"
                    self.lost = f"run {self.run_id}'s lease on {self.url} lapsed unrenewed and {by} took it over"
                    log.error("%s", self.lost)
                    return
                assert self.record is not None
                self.record = self.record.model_copy(update={"expires_at": _now() + timedelta(seconds=self.seconds)})
                self._rewrite(self.record)
            except Exception as e:  # an outage: the next tries (3 more within the lease) may get through
                log.warning("could not renew the lease on %s: %s", self.url, e)

    def _still_ours(self) -> bool:
        """Our generation is still there, ours, and no newer one: a run that took over and has
        since let go leaves no newer file, but it removed ours."""
        assert self.record is not None
        if self._newer() is not None:
            return False
        held = self._read(self.record.generation)
        return held is not None and held.run_id == self.run_id

    def check(self) -> None:
        """Raise LeaseLost if another run has taken the folder over (call before committing)."""
        if self.lost is None and not self._still_ours():
            self.lost = f"run {self.run_id}'s lease on {self.url} lapsed unrenewed and another run took the folder over"
        if self.lost is not None:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        """Let go: the lease file goes, so that a run that fails before it writes anything leaves
        the folder as it found it, and the next run may take it at once."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.record is None or self.lost is not None or not self._still_ours():
            return
        self.fs.rm_file(self._path(self.record.generation))
        if self.local:
            with contextlib.suppress(OSError):  # only if empty: a run taking it now may have written
                os.rmdir(self.folder)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            self.release()
        except Exception as e:  # the run's own outcome matters more; the lease lapses anyway
            log.warning("could not release the lease on %s: %s", self.url, e)
