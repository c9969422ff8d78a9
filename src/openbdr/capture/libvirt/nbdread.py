"""Reading a disk over NBD with libnbd: allocation, dirty bitmap, data with reads in flight.

The export is a libvirt pull-mode backup's (a running domain) or a `qemu-nbd` that libnbd
starts on a private socket for a shut-off domain's image (it exits with the connection,
so a killed proxy leaves no server behind). `base:allocation` gives holes and zeros,
`qemu:dirty-bitmap:<checkpoint>` the blocks changed since that checkpoint. Data is read
ahead of the engine along the extents it is about to read, `in_flight` requests at a
time over `connections` connections, one thread each (libnbd releases the GIL):
QEMU's NBD server answers one connection's requests largely one after the other, so one
connection with many requests in flight stays at about a third of what four give.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import queue
import threading
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import nbd

from ...blocks import BLOCK_SIZE
from ...errors import SourceError
from ...extents import Extent, normalize
from ..agentless import AgentlessDisk, DiskPlan

ALLOCATION = "base:allocation"
STATE_ZERO = 2  # base:allocation: reads as zero
STATE_DIRTY = 1  # qemu:dirty-bitmap: changed since the bitmap's checkpoint
#: bytes asked per NBD_CMD_BLOCK_STATUS (the server answers for at most this)
STATUS_SPAN = 1 << 30

Connect = Callable[[list[str]], "nbd.NBD"]


def block_status(h: nbd.NBD, context: str, size: int) -> list[tuple[int, int, int]]:
    """(offset, length, flags) of `context` over the whole export."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos < size:
        got: list[tuple[int, int, int]] = []

        def cb(ctx: str, offset: int, entries: list[int], err: Any, got: list[Any] = got) -> int:
            if ctx == context:
                o = offset
                for k in range(0, len(entries) - 1, 2):
                    got.append((o, entries[k], entries[k + 1]))
                    o += entries[k]
            return 0

        h.block_status(min(size - pos, STATUS_SPAN), pos, cb)
        if not got:
            raise SourceError(f"NBD server sent no {context} status at offset {pos}")
        for off, length, flags in got:
            length = min(length, size - off)
            if length > 0:
                out.append((off, length, flags))
        pos = got[-1][0] + got[-1][1]
    return out


def connect_unix(socket: str, export: str) -> Connect:
    def connect(contexts: list[str]) -> nbd.NBD:
        h = nbd.NBD()
        for c in contexts:
            h.add_meta_context(c)
        h.set_export_name(export)
        h.connect_unix(socket)
        return h

    return connect


def connect_image(path: str, fmt: str, bitmap: str | None = None) -> Connect:
    """A private read-only `qemu-nbd` of an image file (socket activation), exporting the
    persistent dirty bitmap `bitmap` of a qcow2 image when given."""

    def connect(contexts: list[str]) -> nbd.NBD:
        h = nbd.NBD()
        for c in contexts:
            h.add_meta_context(c)
        args = ["qemu-nbd", "--read-only", "--cache=none", "--aio=threads"]
        if fmt:
            args += ["--format", fmt]
        if bitmap:
            args += ["--bitmap", bitmap]
        h.connect_systemd_socket_activation([*args, path])
        return h

    return connect


class NbdDisk(AgentlessDisk):
    """A disk of an NBD export, read ahead along the planned extents."""

    def __init__(
        self,
        source: str,
        plan: DiskPlan,
        base: str | None,
        connect: Connect,
        bitmap: str | None,
        in_flight: int = 16,
        where: str = "",
        connections: int = 4,
    ) -> None:
        super().__init__(source, plan, base)
        self._connect = connect
        self.connections = max(1, connections)
        self.bitmap = f"qemu:dirty-bitmap:{bitmap}" if bitmap else None
        self.where = where or plan.name
        self.in_flight = max(1, in_flight)
        contexts = [ALLOCATION] + ([self.bitmap] if self.bitmap else [])
        try:
            self.h = connect(contexts)
        except nbd.Error as exc:
            raise SourceError(
                f"cannot read disk {plan.name} over NBD ({self.where}): {exc}"
            ) from None
        self.size = self.h.get_size()
        if self.bitmap and not self.h.can_meta_context(self.bitmap):
            self.h.shutdown()
            raise SourceError(
                f"the NBD export of disk {plan.name} has no {self.bitmap}",
                "the hypervisor's QEMU lacks incremental backup (QEMU >= 6.0 needed)",
            )
        self._offs = array("q")
        self._lens = array("q")
        self._next = 0
        self._pending: collections.deque[tuple[int, int, int, Future[bytes]]] = collections.deque()
        self._pool: ThreadPoolExecutor | None = None
        self._spare: queue.Queue[nbd.NBD] = queue.Queue()
        self._readers: list[nbd.NBD] = []
        self._local = threading.local()
        #: bytes read over NBD (the engine's reads and the file-system analysis)
        self.nbd_bytes = 0

    # -- extents -------------------------------------------------------------------
    def allocation(self) -> tuple[list[Extent], list[Extent]]:
        st = block_status(self.h, ALLOCATION, self.size)
        data = normalize((o, n) for o, n, f in st if not f & STATE_ZERO)
        zero = normalize((o, n) for o, n, f in st if f & STATE_ZERO)
        return data, zero

    def changed(self) -> list[Extent]:
        assert self.bitmap is not None
        return normalize(
            (o, n) for o, n, f in block_status(self.h, self.bitmap, self.size) if f & STATE_DIRTY
        )

    # -- reading -------------------------------------------------------------------
    def plan_reads(self, extents: Sequence[Extent]) -> None:
        """The engine reads `extents` in order, split at 1 MiB blocks: fetch those ahead."""
        self._drain()
        self._offs, self._lens, self._next = array("q"), array("q"), 0
        for ext in extents:
            pos, end = ext.offset, min(ext.end, self.size)
            while pos < end:
                stop = min(end, (pos // BLOCK_SIZE + 1) * BLOCK_SIZE)
                self._offs.append(pos)
                self._lens.append(stop - pos)
                pos = stop

    def _pread(self, offset: int, length: int) -> bytes:
        """One read on this worker thread's own connection."""
        h = getattr(self._local, "h", None)
        if h is None:  # a connection per thread: libnbd runs one blocking call at a time
            h = self._local.h = self._spare.get()
        return bytes(h.pread(length, offset))

    def _start(self) -> None:
        for _ in range(self.connections):
            h = self._connect([])
            self._readers.append(h)
            self._spare.put(h)
        self._pool = ThreadPoolExecutor(self.connections, thread_name_prefix=f"nbd-{self.name}")

    def _fill(self) -> None:
        if self._pool is None:
            self._start()
        assert self._pool is not None
        while len(self._pending) < self.in_flight and self._next < len(self._offs):
            j = self._next
            fut = self._pool.submit(self._pread, self._offs[j], self._lens[j])
            self._pending.append((j, self._offs[j], self._lens[j], fut))
            self._next += 1

    def _drain(self) -> None:
        while self._pending:
            fut = self._pending.popleft()[3]
            fut.cancel()
            with contextlib.suppress(Exception):
                fut.result()

    def _take(self, offset: int, length: int) -> bytes | None:
        """The planned piece at `offset` from the read-ahead (None: not a planned piece)."""
        j = bisect.bisect_left(self._offs, offset)
        if j >= len(self._offs) or self._offs[j] != offset or self._lens[j] != length:
            return None
        first = self._pending[0][0] if self._pending else self._next
        if j < first:
            return None  # read before (a second look): read it again directly
        while self._pending and self._pending[0][0] < j:  # skipped (a resumed sync)
            fut = self._pending.popleft()[3]
            fut.cancel()
            with contextlib.suppress(Exception):
                fut.result()
        if not self._pending:
            self._next = max(self._next, j)
        self._fill()
        idx, _off, n, fut = self._pending.popleft()
        assert idx == j
        try:
            data = fut.result()
        except nbd.Error as exc:
            raise OSError(
                getattr(exc, "errno", None) or 5, f"NBD read at {offset}: {exc}"
            ) from None
        self._fill()
        self.nbd_bytes += n
        return data

    def view(self, offset: int, length: int) -> memoryview | None:
        data = self._take(offset, length)
        return memoryview(data) if data is not None else None

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        n = min(len(buf), self.size - offset)
        if n <= 0:
            return 0
        data = self._take(offset, n)
        if data is None:
            try:
                data = self.h.pread(n, offset)
            except nbd.Error as exc:
                raise OSError(
                    getattr(exc, "errno", None) or 5, f"NBD read at {offset}: {exc}"
                ) from None
            self.nbd_bytes += n
        buf[:n] = data
        return n

    def close(self) -> None:
        if getattr(self, "h", None) is None:
            return
        self._drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for h in [self.h, *self._readers]:
            with contextlib.suppress(nbd.Error):
                h.shutdown()
        self._readers = []
        self.h = None  # type: ignore[assignment]  # the handles close when collected
