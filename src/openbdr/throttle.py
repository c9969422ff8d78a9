"""A token bucket shared by the pipeline's threads: `--bwlimit` on bytes sent."""

from __future__ import annotations

import re
import threading
import time

from .errors import OpenBDRError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rate(text: str) -> float:
    """`50M`, `800k`, `1.5G` (bytes per second, binary units), `0` = unlimited."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?)(?:i?B)?(?:/s)?\s*", text)
    if not m:
        raise OpenBDRError(f"bad rate {text!r}", "write bytes per second like 50M, 800k or 1G")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 4 << 20)
        self.tokens = 0.0  # no free burst at start: a limit holds from the first byte
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        """Block until `n` bytes may be sent."""
        if self.rate <= 0:
            return
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
