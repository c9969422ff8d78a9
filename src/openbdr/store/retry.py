"""Retries with exponential backoff and full jitter, bounded by a deadline.

boto3's own retries give up after a few attempts within seconds; a sync must instead
ride out a gateway restart or a minute of throttling, and fail clearly (its checkpoint
kept) only after `OPENBDR_S3_RETRY_DEADLINE` seconds (default 300) without success.
Only transient failures are retried: 5xx, throttling, timeouts, resets.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

import botocore.exceptions
import urllib3.exceptions

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


def with_retries(
    fn: Callable[[], T],
    what: str,
    *,
    deadline: float | None = None,
    base: float = 0.1,
    cap: float = 5.0,
) -> T:
    """`fn()`, retried on transient errors until `deadline` seconds have passed."""
    limit = time.monotonic() + (deadline_seconds() if deadline is None else deadline)
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            delay = random.uniform(0, min(cap, base * 2**attempt))
            if time.monotonic() + delay > limit:
                raise
            if attempt == 1 or attempt % 10 == 0:
                log.warning("%s: %s; retrying (attempt %d)", what, exc, attempt)
            time.sleep(delay)
