"""The tests' own count of written 1 MiB blocks, from a tracefs instance of their own.

Independent of the agent's tracker (its own instance, its own parser); used to judge how
much an incremental sync reads against how much the workload changed.
"""

from __future__ import annotations

import os
import re
import select
import threading
from pathlib import Path

ROOT = Path("/sys/kernel/tracing")
EVENT = re.compile(rb"block_rq_complete: \d+,\d+ (\S+) \([^)]*\) (\d+) \+ (\d+)")


class WriteCounter:
    def __init__(self, device: str) -> None:
        st = os.stat(device)
        kdev = (os.major(st.st_rdev) << 20) | os.minor(st.st_rdev)
        self.path = ROOT / "instances" / f"openbdr-testcount-{os.getpid()}"
        self.path.mkdir()
        ev = self.path / "events/block/block_rq_complete"
        (ev / "filter").write_text(f"dev == {kdev}\n")
        (self.path / "buffer_size_kb").write_text("8192\n")
        (ev / "enable").write_text("1\n")
        self.fd = os.open(self.path / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        self.blocks: set[int] = set()
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
                    rwbs, sector, count = m.group(1), int(m.group(2)), int(m.group(3))
                    if b"R" in rwbs or count == 0:
                        continue
                    first = sector * 512 >> 20
                    last = ((sector + count) * 512 - 1) >> 20
                    self.blocks.update(range(first, last + 1))

    def take(self) -> set[int]:
        """Blocks written since the last call (after letting the reader catch up)."""
        (self.path / "trace_marker").write_text("sync\n")
        self.stop.wait(0.5)
        with self.lock:
            out, self.blocks = self.blocks, set()
        return out

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        os.close(self.fd)
        (self.path / "events/block/block_rq_complete/enable").write_text("0\n")
        self.path.rmdir()
