"""The tests' own count of written 1 MiB blocks, from a tracefs instance of their own.

Independent of the agent's tracker (its own instance, its own parser); used to judge how
much an incremental sync reads against how much the workload changed.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path("/sys/kernel/tracing")
EVENT = re.compile(
    rb" (\d+\.\d+): block_rq_complete: \d+,\d+ (\S+) \([^)]*\) (\d+) \+ (\d+)"
)


def thawed(freezes: list[dict[str, object]]) -> float:
    """When a capture's last freeze ended (its final cut: the end of the writes its point
    holds), as a `time.time()` value, from the freezes a restore point records."""
    last = freezes[-1]
    return datetime.fromisoformat(str(last["at"])).timestamp() + float(str(last["seconds"]))


class WriteCounter:
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
        self.fd = os.open(self.path / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        #: (completion time on CLOCK_MONOTONIC, first block, last block) of each write
        self.writes: list[tuple[float, int, int]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rest = b""
        while not self.stop.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if not r:
                continue
            try:
                data = rest + os.read(self.fd, 1 << 20)
            except BlockingIOError:
                continue
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            with self.lock:
                for m in EVENT.finditer(data[:cut]):
                    rwbs, sector, count = m.group(2), int(m.group(3)), int(m.group(4))
                    if b"R" in rwbs or count == 0:
                        continue
                    first = sector * 512 >> 20
                    last = ((sector + count) * 512 - 1) >> 20
                    self.writes.append((float(m.group(1)), first, last))

    def take(self, until: float | None = None) -> set[int]:
        """Blocks written since the last call, up to the instant `until` (a `time.time()`
        value, e.g. when a capture's freeze ended) or up to now; later writes stay for the
        next call. The reader catches up first."""
        (self.path / "trace_marker").write_text("sync\n")
        self.stop.wait(0.5)
        end = time.monotonic() if until is None else until - time.time() + time.monotonic()
        with self.lock:
            taken = [w for w in self.writes if w[0] <= end]
            self.writes = [w for w in self.writes if w[0] > end]
        return {b for _t, first, last in taken for b in range(first, last + 1)}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        os.close(self.fd)
        (self.path / "events/block/block_rq_complete/enable").write_text("0\n")
        self.path.rmdir()
