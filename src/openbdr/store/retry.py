"""Retries with exponential backoff and full jitter, bounded by a deadline.

boto3's own retries give up after a few attempts within seconds; a sync must instead
ride out a gateway restart or a minute of throttling, and fail clearly (its checkpoint
kept) only after `OPENBDR_S3_RETRY_DEADLINE` seconds (default 300) without success.
Only transient failures are retried: 5xx, throttling, timeouts, resets.
`RetryingBlobs` puts that in front of any store whose errors can be transient.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import botocore.exceptions
import urllib3.exceptions

from ..errors import UnreachableError
from .blobs import BlobInfo, BlobsWrapper

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_CODES = frozenset(
    {
        "500", "502", "503", "504", "429",
        "InternalError", "ServiceUnavailable", "SlowDown", "Throttling",
        "ThrottlingException", "RequestTimeout", "RequestLimitExceeded",
        "TooManyRequestsException", "ProvisionedThroughputExceededException",
    }
)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.HTTPClientError,  # connection refused/closed/reset, timeouts
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return str(err.get("Code", "")) in TRANSIENT_CODES or status >= 500 or status == 429
    return isinstance(exc, TRANSIENT_ERRORS)


def deadline_seconds() -> float:
    return float(os.environ.get("OPENBDR_S3_RETRY_DEADLINE", "300"))


class Backoff:
    """Waits between attempts: exponential with full jitter, until a deadline."""

    def __init__(
        self,
        what: str,
        *,
        deadline: float | None = None,
        base: float = 0.1,
        cap: float = 5.0,
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> None:
        self.what = what
        self.limit = time.monotonic() + (deadline_seconds() if deadline is None else deadline)
        self.base, self.cap = base, cap
        self.transient = transient
        self.attempt = 0

    def wait(self, exc: Exception) -> None:
        """Sleep before the next attempt; raise `exc` if it is not transient or time is up."""
        if not self.transient(exc):
            raise exc
        self.attempt += 1
        delay = random.uniform(0, min(self.cap, self.base * 2**self.attempt))
        if time.monotonic() + delay > self.limit:
            raise exc
        if self.attempt == 1 or self.attempt % 10 == 0:
            log.warning("%s: %s; retrying (attempt %d)", self.what, exc, self.attempt)
        time.sleep(delay)


def with_retries(
    fn: Callable[[], T],
    what: str,
    *,
    deadline: float | None = None,
    transient: Callable[[BaseException], bool] = is_transient,
) -> T:
    """`fn()`, retried on transient errors until `deadline` seconds have passed."""
    backoff = Backoff(what, deadline=deadline, transient=transient)
    while True:
        try:
            return fn()
        except Exception as exc:
            backoff.wait(exc)


class RetryingBlobs(BlobsWrapper):
    """Every operation of `inner` retried on its transient errors; past the deadline, one
    clear error. A listing broken off is resumed after the last key it gave, where the
    store lists in key order (else it fails like any other operation)."""

    def _gave_up(self, what: str, exc: Exception) -> Exception:
        if not self.inner.is_transient(exc):
            return exc
        return UnreachableError(
            f"{self.url} stopped answering during {what}: {exc}",
            "check the storage service; a sync resumes from its checkpoint when run again",
        )

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return with_retries(fn, f"{self.url}: {what}", transient=self.inner.is_transient)
        except Exception as exc:
            raise self._gave_up(what, exc) from None

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._retry(f"put {key}", lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._retry(f"put {key}", lambda: self.inner.put_if_absent(key, data))

    def replace_if(self, key: str, expected: bytes, data: bytes) -> bool:
        return self._retry(f"put {key}", lambda: self.inner.replace_if(key, expected, data))

    def get(self, key: str) -> bytes:
        return self._retry(f"get {key}", lambda: self.inner.get(key))

    def exists(self, key: str) -> bool:
        return self._retry(f"head {key}", lambda: self.inner.exists(key))

    def delete(self, key: str) -> None:
        self._retry(f"delete {key}", lambda: self.inner.delete(key))

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        what = f"list {prefix or '/'}"
        backoff = Backoff(f"{self.url}: {what}", transient=self.inner.is_transient)
        last: str | None = None
        resumed: str | None = None
        while True:
            try:
                for info in self.inner.list(prefix):
                    if last is not None and info.key <= last:
                        continue  # given before the listing broke off
                    last = info.key
                    yield info
                return
            except Exception as exc:
                if last is not None and not self.inner.sorted_listing:
                    raise self._gave_up(what, exc) from None
                if last != resumed:  # progress since the last break: a fresh deadline
                    backoff = Backoff(f"{self.url}: {what}", transient=self.inner.is_transient)
                    resumed = last
                try:
                    backoff.wait(exc)
                except Exception:
                    raise self._gave_up(what, exc) from None
