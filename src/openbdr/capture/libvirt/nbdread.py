"""Reading a disk over NBD with libnbd: allocation, dirty bitmap, data with reads in flight.

The export is a libvirt pull-mode backup's (a running domain) or a `qemu-nbd` that libnbd
starts on a private socket for a shut-off domain's image (it exits with the connection,
so a killed proxy leaves no server behind). `base:allocation` gives holes and zeros,
`qemu:dirty-bitmap:<checkpoint>` the blocks changed since that checkpoint. Data is read
ahead of the engine along the extents it is about to read (`ReadAhead`), in requests of
up to 4 MiB split into the engine's 1 MiB blocks, with libnbd's asynchronous API:
`in_flight` requests on each of `connections` connections, as nbdcopy does. QEMU's NBD
server answers one connection's requests largely one after the other, so the rate comes
from several connections each kept busy, not from one deep queue.
"""

from __future__ import annotations

import bisect
import contextlib
import sys
import threading
from array import array
from collections.abc import Callable, Sequence
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
#: bytes per NBD read request: fewer, larger requests cost the server and libnbd less
#: per byte (QEMU accepts up to 32 MiB); split into the engine's blocks on arrival
REQUEST = 4 * BLOCK_SIZE

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


class _Buf:
    """One request buffer: `mem`, and the view of it libnbd reads into."""

    def __init__(self) -> None:
        self.mem = bytearray(REQUEST)
        self.nbd_view = memoryview(self.mem)
        self.nbd_buf = nbd.Buffer.from_buffer(self.nbd_view)
        #: references to `mem` when nobody else holds a view of it (see `_Pinned`)
        self.idle = sys.getrefcount(self.mem)

    def for_nbd(self, n: int) -> nbd.Buffer:
        return self.nbd_buf if n == REQUEST else nbd.Buffer.from_buffer(self.nbd_view[:n])

    def in_use(self) -> bool:
        return sys.getrefcount(self.mem) != self.idle


class _Pinned:
    """Request buffers, reused for the life of the process. libnbd 1.14's Python binding
    keeps a reference to every buffer an `aio_pread` was given (here `nbd_view` and its
    slices, which never change `mem`'s count), so a buffer passed once is never freed:
    a fresh one per request would leak all the bytes read. The engine gets views of
    `mem` itself (`ReadAhead.view`), each holding a reference to it, so a buffer given
    back is reused only once `mem` has no more references than when it was made: no
    view of it is left, whenever the engine's workers finish with theirs."""

    def __init__(self) -> None:
        self._free: list[_Buf] = []
        self._lock = threading.Lock()

    def take(self) -> _Buf:
        with self._lock:
            for k in range(len(self._free)):
                if not self._free[k].in_use():
                    return self._free.pop(k)
        return _Buf()

    def give(self, buf: _Buf) -> None:
        with self._lock:
            self._free.append(buf)


PINNED = _Pinned()


class ReadAhead:
    """Planned pieces read ahead over several NBD connections with libnbd's asynchronous
    API: one thread per connection keeps `depth` requests in flight on its handle (its
    `poll` releases the GIL while it waits), requests go to the connections in turn, and
    at most `connections * depth` requests are read past the one the engine takes. The
    engine hashes and stores whole blocks from views of the request buffers (`view`),
    which are reused once those views are gone (`_Pinned`): a fresh buffer per request
    would cost its page faults, more CPU than hashing its bytes."""

    def __init__(
        self,
        pieces: tuple[array, array],
        connect: Connect,
        connections: int,
        depth: int,
        where: str,
    ) -> None:
        offs, lens = pieces
        self.piece_len = lens
        #: per piece: its request and its offset there; per request: offset, length
        self.piece_req = array("q")
        self.piece_at = array("q")
        self.req_off = array("q")
        self.req_len = array("q")
        for j in range(len(offs)):
            o, n = offs[j], lens[j]
            r = len(self.req_off) - 1
            if r >= 0 and self.req_off[r] + self.req_len[r] == o and self.req_len[r] + n <= REQUEST:
                self.req_len[r] += n
            else:
                self.req_off.append(o)
                self.req_len.append(n)
                r += 1
            self.piece_req.append(r)
            self.piece_at.append(o - self.req_off[r])
        n_req = len(self.req_off)
        self.where = where
        self.depth = max(1, depth)
        self.conns = max(1, min(connections, n_req))
        self.window = self.conns * self.depth
        self._data: dict[int, _Buf] = {}
        self._errors: dict[int, str] = {}
        self._cv = threading.Condition()
        self._consumed = 0  # the request the engine takes from; those before are done
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._handles: list[nbd.NBD] = []
        for _ in range(self.conns if n_req else 0):
            h = connect([])
            h.set_pread_initialize(False)  # every byte is overwritten: spare the memset
            self._handles.append(h)
        for k, h in enumerate(self._handles):
            t = threading.Thread(
                target=self._run, args=(k, h), name=f"nbd-{where}-{k}", daemon=True
            )
            self._threads.append(t)
            t.start()

    # -- the connection threads --------------------------------------------------------
    def _run(self, k: int, h: nbd.NBD) -> None:
        nxt = k  # this connection's next request
        #: (request, cookie, buffer) in flight, in order
        flight: list[tuple[int, int, _Buf]] = []
        n_req = len(self.req_off)
        try:
            while True:
                with self._cv:
                    while True:
                        if self._stop:
                            break
                        while nxt < self._consumed:  # skipped by the engine
                            nxt += self.conns
                        can = nxt < n_req and nxt < self._consumed + self.window
                        if can or flight or nxt >= n_req:
                            break
                        self._cv.wait()
                if (self._stop or nxt >= n_req) and not flight:
                    return
                while can and not self._stop and len(flight) < self.depth:
                    pinned = PINNED.take()
                    try:
                        cookie = h.aio_pread(pinned.for_nbd(self.req_len[nxt]), self.req_off[nxt])
                    except BaseException:
                        PINNED.give(pinned)
                        raise
                    flight.append((nxt, cookie, pinned))
                    nxt += self.conns
                    can = nxt < n_req and nxt < self._consumed + self.window
                h.poll(-1)
                done: list[tuple[int, _Buf, str | None]] = []
                waiting = []
                for r, cookie, pinned in flight:
                    try:
                        if h.aio_command_completed(cookie):
                            done.append((r, pinned, None))
                        else:
                            waiting.append((r, cookie, pinned))
                    except nbd.Error as exc:
                        done.append((r, pinned, str(exc)))
                flight = waiting
                if done:
                    with self._cv:
                        for r, pinned, err in done:
                            if err is None and r >= self._consumed and not self._stop:
                                self._data[r] = pinned
                                continue
                            PINNED.give(pinned)
                            if err is not None:
                                self._errors[r] = err
                        self._cv.notify_all()
        except Exception as exc:  # the connection failed: its requests fail with it
            with self._cv:
                for r in range(k, n_req, self.conns):
                    if r >= self._consumed and r not in self._data:
                        self._errors.setdefault(r, f"NBD connection {k} failed: {exc}")
                self._cv.notify_all()
            # a buffer still in flight may yet be written by libnbd: not reused
            # (it stays referenced by the binding anyway)

    # -- the engine's side ----------------------------------------------------------
    def _advance(self, r: int) -> None:
        """The engine is past request `r - 1`: give back what it no longer needs."""
        if r > self._consumed:
            for old in range(self._consumed, r):
                pinned = self._data.pop(old, None)
                if pinned is not None:
                    PINNED.give(pinned)
                self._errors.pop(old, None)
            self._consumed = r
            self._cv.notify_all()

    def view(self, j: int) -> memoryview:
        """Piece `j`'s bytes, without a copy (pieces come in order; earlier requests are
        given up; the buffer is reused only once this view and its slices are gone).
        Raises OSError when the server failed the read."""
        r = self.piece_req[j]
        at, n = self.piece_at[j], self.piece_len[j]
        with self._cv:
            self._advance(r)
            while r not in self._data and r not in self._errors:
                self._cv.wait()
            pinned = self._data.get(r)
            if pinned is None:
                raise OSError(5, f"NBD read at {self.req_off[r]} ({self.where}): {self._errors[r]}")
            out = memoryview(pinned.mem)[at : at + n]
            if at + n == self.req_len[r]:  # the request's last piece
                self._advance(r + 1)
        return out

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:  # each returns once its requests in flight are answered
            t.join()
        with self._cv:
            for pinned in self._data.values():
                PINNED.give(pinned)
            self._data.clear()
        for h in self._handles:
            with contextlib.suppress(nbd.Error):
                h.shutdown()
        self._handles = []


class NbdDisk(AgentlessDisk):
    """A disk of an NBD export, read ahead along the planned extents."""

    def __init__(
        self,
        source: str,
        plan: DiskPlan,
        base: str | None,
        connect: Connect,
        bitmap: str | None,
        in_flight: int = 4,
        where: str = "",
        connections: int = 4,
    ) -> None:
        super().__init__(source, plan, base)
        self._connect = connect
        self.connections = max(1, connections)
        self.bitmap = f"qemu:dirty-bitmap:{bitmap}" if bitmap else None
        self.where = where or plan.name
        #: requests in flight on each connection
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
        self._ahead: ReadAhead | None = None
        self._last = -1  # the last planned piece taken
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
        self._stop_ahead()
        self._offs, self._lens, self._last = array("q"), array("q"), -1
        for ext in extents:
            pos, end = ext.offset, min(ext.end, self.size)
            while pos < end:
                stop = min(end, (pos // BLOCK_SIZE + 1) * BLOCK_SIZE)
                self._offs.append(pos)
                self._lens.append(stop - pos)
                pos = stop

    def _stop_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    def _take(self, offset: int, length: int) -> memoryview | None:
        """The planned piece at `offset` from the read-ahead, without a copy (None: not a
        planned piece, or one taken before: the caller reads it directly)."""
        j = bisect.bisect_left(self._offs, offset)
        if j >= len(self._offs) or self._offs[j] != offset or self._lens[j] != length:
            return None
        if j <= self._last:
            return None  # read before (a second look): read it again directly
        if self._ahead is None:
            try:
                self._ahead = ReadAhead(
                    (self._offs, self._lens),
                    self._connect,
                    self.connections,
                    self.in_flight,
                    self.where,
                )
            except nbd.Error as exc:
                raise OSError(getattr(exc, "errno", None) or 5, f"NBD connect: {exc}") from None
        data = self._ahead.view(j)
        self._last = j
        self.nbd_bytes += length
        return data

    def view(self, offset: int, length: int) -> memoryview | None:
        """A whole planned block as it arrived: hashed and stored from the request buffer,
        no copy (the engine asks this for blocks read whole)."""
        return self._take(offset, length)

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
        memoryview(buf)[:n] = data
        return n

    def close(self) -> None:
        if getattr(self, "h", None) is None:
            return
        self._stop_ahead()
        with contextlib.suppress(nbd.Error):
            self.h.shutdown()
        self.h = None  # type: ignore[assignment]  # the handle closes when collected
