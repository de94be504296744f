"""Transient or permanent? And reading a file with bounded retries when the answer is transient.

Object stores fail in passing all the time (a dropped connection, a burst of 503 SlowDown, a read
timeout), and s3fs or botocore retry some of that themselves; what still reaches the job gets a
few more attempts with exponential backoff here. A failure that no retry can fix (no such file,
access denied, not an image) is permanent and is never retried. An error row records which kind
it was, so that `--retry-errors transient` can re-attempt exactly the rows an outage made.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import fsspec

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = "transient"
PERMANENT = "permanent"

_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_TRANSIENT_ERRNOS = {
    errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EAGAIN, errno.EBUSY,  # s3fs: SlowDown, ServiceUnavailable
    getattr(errno, "EREMOTEIO", errno.EIO),  # s3fs: InternalError
}  # fmt: skip
_THROTTLING_CODES = {"Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded", "TooManyRequests"}


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and its causes, outermost first (s3fs wraps botocore's error as the cause)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_status_is_transient(status: int | None) -> bool:
    return status is not None and (status >= 500 or status in (408, 429))


def is_transient(error: BaseException) -> bool:
    """True for failures that may pass if tried again: connections, timeouts, throttling, 5xx."""
    import aiohttp
    import botocore.exceptions

    for cause in _chain(error):
        if isinstance(cause, botocore.exceptions.ClientError):
            response = cause.response or {}
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return _http_status_is_transient(status) or response.get("Error", {}).get("Code") in _THROTTLING_CODES
        if isinstance(cause, aiohttp.ClientResponseError):
            return _http_status_is_transient(cause.status)
        if isinstance(cause, _PERMANENT_TYPES):
            return False
        if isinstance(
            cause,
            (
                ConnectionError,
                TimeoutError,
                botocore.exceptions.ConnectionError,
                botocore.exceptions.HTTPClientError,
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
            ),
        ):
            return True
        if isinstance(cause, OSError) and cause.errno in _TRANSIENT_ERRNOS:
            return True
    return False


def classify(error: BaseException) -> str:
    """`transient` or `permanent`: what an error row's `error_kind` says."""
    return TRANSIENT if is_transient(error) else PERMANENT


def with_retries(
    call: Callable[[], T],
    what: str,
    attempts: int = 4,
    first_delay_s: float = 0.5,
    max_delay_s: float = 8.0,
) -> T:
    """`call()`, tried again after a transient failure up to `attempts` times in all, after delays
    of first_delay_s, twice that, ... (capped, with jitter, so that many workers failing together
    do not retry together). The last failure, or the first permanent one, is raised. The one
    retry policy of every read: images, videos, training samples."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:
            if attempt == attempts or not is_transient(e):
                raise
            delay = min(max_delay_s, first_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            reason = f"{type(e).__name__}: {e}"
            log.info("%s failed (%s); try %d of %d in %.1fs", what, reason, attempt + 1, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def read_bytes(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    attempts: int = 4,
    first_delay_s: float = 0.5,
    max_delay_s: float = 8.0,
) -> bytes:
    """The file's bytes, through `with_retries`."""

    def read() -> bytes:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            return f.read()

    return with_retries(read, f"reading {uri}", attempts, first_delay_s, max_delay_s)
