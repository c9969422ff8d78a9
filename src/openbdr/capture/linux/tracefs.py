"""A private tracefs instance that reports completed writes of chosen block devices.

Completion (`block_rq_complete`), not submission, is the event: a write that changes a block
after we read it completes after that read, so clearing the dirty set before a read and
marking at completion never misses a change. The kernel filters on the device and on writes
and discards, so only the events we need reach user space, and without the context columns
(task, CPU, time stamp) the lines are half as long. Markers written to
`trace_marker` come back in order through `trace_pipe`; reading up to one's own marker
drains every event that completed before it. Lost events (ring overruns, drops) are counted
by the kernel per CPU and read from `per_cpu/cpu*/stats`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import subprocess
from collections import Counter
from pathlib import Path

from ...errors import SourceError

TRACEFS = Path("/sys/kernel/tracing")
EVENT = "block/block_rq_complete"
#: one write completion, as `trace_pipe` prints it: its first sector and length in sectors
WRITE = re.compile(rb"block_rq_complete: \d+,\d+ \S+ \([^)]*\) (\d+) \+ (\d+)")
#: one of our markers
MARKER = re.compile(rb"tracing_mark_write: openbdr-cut-(\d+)")


def kernel_dev(major: int, minor: int) -> int:
    """dev_t as the kernel's trace events encode it (20 bits of minor)."""
    return (major << 20) | minor


def ensure_mounted(root: Path = TRACEFS) -> Path:
    """Mount tracefs where the kernel expects it, if it is not there yet."""
    if (root / "instances").is_dir():
        return root
    proc = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(root)], capture_output=True, text=True
    )
    if proc.returncode != 0 or not (root / "instances").is_dir():
        raise SourceError(
            f"cannot mount tracefs on {root} ({proc.stderr.strip() or 'no instances directory'})",
            "the agent needs root and a kernel with tracing (CONFIG_BLK_DEV_IO_TRACE)",
        )
    return root


class Instance:
    """One tracefs instance (`instances/<name>`): its own ring buffer, filters and pipe."""

    def __init__(self, name: str, root: Path | None = None) -> None:
        self.root = ensure_mounted(root or TRACEFS)
        self.name = name
        self.path = self.root / "instances" / name
        self.fd = -1

    def exists(self) -> bool:
        return self.path.is_dir()

    def create(self, filter_expr: str, buffer_kb: int = 4096) -> None:
        """Make the instance, keep only our events, and start recording."""
        if not self.exists():
            try:
                self.path.mkdir()
            except OSError as exc:
                raise SourceError(
                    f"cannot create tracefs instance {self.path} ({exc.strerror})",
                    "run the agent as root",
                ) from None
        self._write("buffer_size_kb", str(buffer_kb))
        for opt in ("noirq-info", "norecord-cmd", "nocontext-info", "overwrite"):
            self._write("trace_options", opt, optional=True)
        ev = self.path / "events" / EVENT
        if not ev.is_dir():
            raise SourceError(
                f"tracepoint {EVENT} missing under {self.path}",
                "the kernel needs block tracepoints (CONFIG_BLK_DEV_IO_TRACE)",
            )
        self._write(f"events/{EVENT}/filter", filter_expr)
        got = (ev / "filter").read_text().strip()
        if got != filter_expr:
            raise SourceError(f"tracefs rejected the filter {filter_expr!r} ({got})")
        self._write(f"events/{EVENT}/enable", "1")

    def _write(self, rel: str, value: str, optional: bool = False) -> None:
        try:
            (self.path / rel).write_text(value + "\n")
        except OSError as exc:
            if optional:
                return
            raise SourceError(
                f"cannot write {value!r} to {self.path / rel} ({exc.strerror})"
            ) from None

    def lost(self) -> int:
        """Events the kernel overwrote or dropped in this instance, summed over CPUs."""
        n = 0
        for stats in sorted((self.path / "per_cpu").glob("cpu*/stats")):
            for line in stats.read_text().splitlines():
                key, _, val = line.partition(":")
                if key.strip() in ("overrun", "commit overrun", "dropped events"):
                    with contextlib.suppress(ValueError, IndexError):
                        n += int(val.strip().split()[0])
        return n

    def mark(self, text: str) -> None:
        with open(self.path / "trace_marker", "w") as f:
            f.write(text)

    def open_pipe(self) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def read(self, timeout: float, limit: int = 4 << 20) -> bytes:
        """What the pipe holds now (up to `limit` bytes), waiting up to `timeout` s for
        something; b'' if nothing. The kernel returns at most a page per read(2)."""
        self.open_pipe()
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return b""
        parts = []
        got = 0
        while got < limit:
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    break
                raise
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Stop recording and delete the instance (its ring buffer goes with it)."""
        self.close()
        if not self.exists():
            return
        self._write(f"events/{EVENT}/enable", "0", optional=True)
        try:
            self.path.rmdir()
        except OSError as exc:
            raise SourceError(
                f"cannot remove tracefs instance {self.path} ({exc.strerror})"
            ) from None


def parse(data: bytes) -> tuple[Counter[tuple[int, int]], int]:
    """Write completions in a chunk of `trace_pipe` text, counted per (first sector, sectors)
    — a database rewrites the same pages over and over, so a chunk has few distinct ones —
    and the highest marker number `openbdr-cut-n` in it (-1: none). One regex pass each,
    no object per line."""
    raw = Counter(WRITE.findall(data))
    writes: Counter[tuple[int, int]] = Counter()
    for (sector, count), k in raw.items():
        writes[int(sector), int(count)] += k
    marks = MARKER.findall(data) if b"openbdr-cut-" in data else []
    return writes, max(map(int, marks), default=-1)


def write_filter(kdev: int, first_sector: int | None = None, last_sector: int | None = None) -> str:
    """Writes, discards and write-zeroes ('N') of one device, optionally of a sector range."""
    expr = f'dev == {kdev} && nr_sector > 0 && (rwbs ~ "*W*" || rwbs ~ "*D*" || rwbs ~ "*N*")'
    if first_sector is not None and last_sector is not None:
        expr += f" && sector < {last_sector} && sector >= {max(0, first_sector - 65536)}"
    return expr
