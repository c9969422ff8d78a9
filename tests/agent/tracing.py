"""The tests' own count of written 1 MiB blocks, from a tracefs instance of their own.

Independent of the agent's tracker (its own instance, its own parser); used to judge how
much an incremental sync reads against how much the workload changed.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path("/sys/kernel/tracing")
REPO = Path(__file__).resolve().parents[2]
EVENT = re.compile(
    rb" (\d+\.\d+): block_rq_complete: \d+,\d+ (\S+) \([^)]*\) (\d+) \+ (\d+)"
)


def thawed(freezes: list[dict[str, object]]) -> float:
    """When a capture's last freeze ended (its final cut: the end of the writes its point
    holds), as a `time.time()` value, from the freezes a restore point records."""
    last = freezes[-1]
    return datetime.fromisoformat(str(last["at"])).timestamp() + float(str(last["seconds"]))


def _count(path: str) -> None:
    """The counting process: parses the instance's events; to each line on stdin (the end
    of a window on CLOCK_MONOTONIC) answers with the blocks written up to it, one line."""
    fd = os.open(Path(path) / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
    writes: list[tuple[float, int, int]] = []
    rest = b""

    def drain() -> None:
        nonlocal rest
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                return
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            for m in EVENT.finditer(data[:cut]):
                rwbs, sector, count = m.group(2), int(m.group(3)), int(m.group(4))
                if b"R" in rwbs or count == 0:
                    continue
                first = sector * 512 >> 20
                last = ((sector + count) * 512 - 1) >> 20
                writes.append((float(m.group(1)), first, last))

    while True:
        ready, _, _ = select.select([fd, sys.stdin], [], [], 0.2)
        drain()
        if sys.stdin in ready:
            line = sys.stdin.readline()
            if not line:
                break
            end = float(line)
            taken = [w for w in writes if w[0] <= end]
            writes[:] = [w for w in writes if w[0] > end]
            blocks = sorted({b for _t, first, last in taken for b in range(first, last + 1)})
            print(" ".join(map(str, blocks)), flush=True)
    os.close(fd)


class WriteCounter:
    """Runs in a process of its own: parsing every write of a database under load holds
    a GIL, and a benchmark must not lend the agent's to it."""

    def __init__(self, device: str) -> None:
        st = os.stat(device)
        kdev = (os.major(st.st_rdev) << 20) | os.minor(st.st_rdev)
        self.path = ROOT / "instances" / f"openbdr-testcount-{os.getpid()}"
        self.path.mkdir()
        ev = self.path / "events/block/block_rq_complete"
        (ev / "filter").write_text(f"dev == {kdev}\n")
        (self.path / "buffer_size_kb").write_text("8192\n")
        # CLOCK_MONOTONIC timestamps: a window can end at an instant the agent reports
        (self.path / "trace_clock").write_text("mono\n")
        (ev / "enable").write_text("1\n")
        code = f"from tests.agent.tracing import _count; _count({str(self.path)!r})"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def take(self, until: float | None = None) -> set[int]:
        """Blocks written since the last call, up to the instant `until` (a `time.time()`
        value, e.g. when a capture's freeze ended) or up to now; later writes stay for the
        next call. The reader catches up first."""
        (self.path / "trace_marker").write_text("sync\n")
        time.sleep(0.5)
        end = time.monotonic() if until is None else until - time.time() + time.monotonic()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{end!r}\n")
        self.proc.stdin.flush()
        return {int(b) for b in self.proc.stdout.readline().split()}

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.communicate(timeout=5)  # end of stdin: the process ends
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        (self.path / "events/block/block_rq_complete/enable").write_text("0\n")
        self.path.rmdir()
