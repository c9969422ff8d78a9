"""Blocks copied during a capture's later passes: the frozen state of what changed.

Up to a memory budget the blocks sit in anonymous memory, one 1 MiB slot each: they are
needed for one sync only and never need to be durable, a repository flush on the same
file system then does not write them out, and the device is read straight into their
slot (no bounce copy). Past the budget they move to a sparse file in the agent's state
directory, at the disk's own offsets, never on a protected file system (which may be
frozen while it is written). Copies run a few reads at a time: a device (and a loop
device's backing file) serves queued reads faster than one by one. A block already
staged whole is copied again only in the 4 KiB pages written since (a database's 8 KiB
writes would otherwise cost 1 MiB re-reads each).

The memory outlives a capture (`StagingMemory`): on a virtual machine every page taken
for the first time is a fault the hypervisor serves, and staging ~700 MiB into fresh
memory cost 0.8 s of CPU here against 0.1 s into the pages the previous capture used.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ...blocks import BLOCK_SIZE, block_span
from .bitmap import DirtyBitmap
from .direct import DirectReader

#: reads in flight during a copy (preadv/pwrite release the GIL)
COPY_THREADS = 4
PAGE = 4096
#: address space only: pages are taken where a slot is written (Linux's value)
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


def page_runs(mask: int) -> list[tuple[int, int]]:
    """(first page, pages) of each run of set bits in `mask`."""
    runs = []
    while mask:
        low = (mask & -mask).bit_length() - 1
        x = mask >> low
        n = (~x & (x + 1)).bit_length() - 1
        runs.append((low, n))
        mask &= ~(((1 << n) - 1) << low)
    return runs


def memory_budget(limit: int) -> int:
    """At most `limit` bytes, and at most a quarter of the memory available now."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return min(limit, int(line.split()[1]) * 1024 // 4)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _close_map(m: mmap.mmap | None) -> None:
    if m is not None:
        with contextlib.suppress(BufferError):  # a view still held: unmapped when freed
            m.close()


class StagingMemory:
    """Anonymous memory for one disk's staged blocks, in 1 MiB slots, that one capture at a
    time borrows. Given back, it is kept `keep` seconds for the next capture and then
    returned to the system (at once when `keep` is 0): a host syncing every few seconds
    pays its page faults once, a host syncing every quarter hour does not hold the memory
    in between."""

    def __init__(self, capacity: int, keep: float = 0.0) -> None:
        self.slots = capacity // BLOCK_SIZE
        self.keep = keep
        self.map: mmap.mmap | None = mmap.mmap(
            -1,
            max(1, self.slots) * BLOCK_SIZE,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
        )
        self._lock = threading.Lock()
        self._busy = False
        self._timer: threading.Timer | None = None

    def acquire(self) -> bool:
        """Borrow the memory; False when another capture holds it or it was returned."""
        with self._lock:
            if self._busy or self.map is None:
                return False
            self._busy = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return True

    def release(self) -> None:
        with self._lock:
            self._busy = False
            if self.map is None:
                return
            if self.keep <= 0:
                self._drop()
                return
            self._timer = threading.Timer(self.keep, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if not self._busy and self.map is not None:
                self._drop()

    def close(self) -> None:
        """Return the memory now (the agent stops); a capture still holding it keeps it
        until it gives it back."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._busy:
                self.keep = 0
            elif self.map is not None:
                self._drop()

    def _drop(self) -> None:
        # unmapping ~1 GiB takes a few tenths of a second nobody need wait for
        held, self.map = self.map, None
        threading.Thread(target=_close_map, args=(held,), name="staging-free", daemon=True).start()


class Staging:
    """The staged blocks of one disk for one capture: in `memory`'s slots (borrowed; an int
    is a private budget) until they outgrow it, then in a file at `path`."""

    def __init__(
        self, path: Path, size: int, memory: StagingMemory | int | None = None
    ) -> None:
        self.path = path
        self.size = size
        self.blocks = DirtyBitmap(size)
        if isinstance(memory, int):
            memory = StagingMemory(memory) if memory >= BLOCK_SIZE else None
            if memory is not None:
                memory.acquire()
        self._memory = memory
        self._slot: dict[int, int] = {}
        self.fd = -1
        if memory is None:
            self._open_file()
        self.bytes_copied = 0
        self._lock = threading.Lock()

    def _open_file(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.ftruncate(self.fd, self.size)

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def copy(
        self, src: DirectReader, blocks: list[int], pages: dict[int, int] | None = None
    ) -> None:
        """Copy blocks from the device (their current content replaces earlier copies): whole,
        or only the pages `pages` names when the block is staged whole already."""
        blocks = [b for b in blocks if block_span(b, self.size) > 0]
        if self._memory is not None:
            new = [b for b in dict.fromkeys(blocks) if b not in self.blocks]
            if len(self._slot) + len(new) > self._memory.slots:
                self._spill()
            else:
                for b in new:
                    self._slot[b] = len(self._slot)
        pages = pages or {}
        work = [(b, pages.get(b) if b in self.blocks else None) for b in blocks]
        if len(work) <= 2 * COPY_THREADS:
            self._copy_some(src, work)
        else:
            with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="stage") as pool:
                list(pool.map(self._copy_some, [src] * COPY_THREADS,
                              [work[k::COPY_THREADS] for k in range(COPY_THREADS)]))
        self.blocks.add_all(blocks)

    def _copy_some(self, src: DirectReader, work: list[tuple[int, int | None]]) -> None:
        # in memory: read into the block's slot; in a file: through a buffer
        mapped = memoryview(self._memory.map) if self._memory is not None else None  # type: ignore[arg-type]
        view = memoryview(bytearray(BLOCK_SIZE)) if mapped is None else None
        n = 0
        try:
            for b, mask in work:
                base, span = b * BLOCK_SIZE, block_span(b, self.size)
                ranges = [(0, span)] if mask is None else [
                    (first * PAGE, min(count * PAGE, span - first * PAGE))
                    for first, count in page_runs(mask) if first * PAGE < span
                ]
                for off, length in ranges:
                    if mapped is not None:
                        at = self._slot[b] * BLOCK_SIZE + off
                        n += src.read_into(base + off, mapped[at : at + length])
                        continue
                    assert view is not None
                    got = src.read_into(base + off, view[:length])
                    os.pwrite(self.fd, view[:got], base + off)
                    n += got
        finally:
            if mapped is not None:
                mapped.release()
            with self._lock:
                self.bytes_copied += n

    def _spill(self) -> None:
        """Move the staged blocks from memory to the file (the budget is spent)."""
        assert self._memory is not None and self._memory.map is not None
        self._open_file()
        try:
            with memoryview(self._memory.map) as mapped:
                for b, slot in self._slot.items():
                    at = slot * BLOCK_SIZE
                    os.pwrite(self.fd, mapped[at : at + block_span(b, self.size)], b * BLOCK_SIZE)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise
        memory, self._memory = self._memory, None
        self._slot = {}
        memory.release()

    def __contains__(self, b: int) -> bool:
        return b in self.blocks

    def _at(self, offset: int, length: int) -> int | None:
        """Where `length` bytes at disk `offset` are in memory, if one staged block holds them."""
        b = offset // BLOCK_SIZE
        slot = self._slot.get(b)
        if slot is None or offset + length > b * BLOCK_SIZE + block_span(b, self.size):
            return None
        return slot * BLOCK_SIZE + offset - b * BLOCK_SIZE

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Staged bytes at `offset` (within one block) into `buf`."""
        if self._memory is None:
            return os.preadv(self.fd, [buf], offset)
        b = offset // BLOCK_SIZE
        n = max(0, min(len(buf), b * BLOCK_SIZE + block_span(b, self.size) - offset))
        at = self._at(offset, n)
        if at is None:
            raise ValueError(f"block {b} is not staged")
        assert self._memory.map is not None
        with memoryview(self._memory.map) as mapped:
            buf[:n] = mapped[at : at + n]
        return n

    def view(self, offset: int, length: int) -> memoryview | None:
        """Staged bytes in place (in memory only), read-only."""
        at = self._at(offset, length) if self._memory is not None else None
        if at is None or self._memory is None or self._memory.map is None:
            return None
        with memoryview(self._memory.map) as whole:
            return whole[at : at + length].toreadonly()

    def close(self) -> None:
        """Drop the staged blocks: the memory goes back to its keeper, a file's space is
        given back in the background (freeing ~1 GiB takes a few tenths of a second that
        the sync, committed already, need not wait for)."""
        self.path.unlink(missing_ok=True)
        memory, self._memory = self._memory, None
        self._slot = {}
        if memory is not None:
            memory.release()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            threading.Thread(target=os.close, args=(fd,), name="staging-free",
                             daemon=True).start()
