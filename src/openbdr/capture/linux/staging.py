"""Blocks copied during a capture's later passes: the frozen state of what changed.

The blocks sit at the disk's own offsets in a sparse file, plus the set of blocks it holds.
They are needed for one sync only and never need to be durable, so up to a memory budget
the file is anonymous memory (`memfd`): a repository flush on the same file system then
does not write them to disk, and the device is read straight into its map (no bounce
copy). Past the budget they move to a file in the agent's state directory, never on a
protected file system (which may be frozen while it is written). Either is gone when the snapshot is released. Copies run a few reads at a time:
a device (and a loop device's backing file) serves queued reads faster than one by one.
A block already staged whole is copied again only in the 4 KiB pages written since (a
database's 8 KiB writes would otherwise cost 1 MiB re-reads each).
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


class Staging:
    def __init__(self, path: Path, size: int, memory: int = 0) -> None:
        self.path = path
        self.size = size
        self.blocks = DirtyBitmap(size)
        #: bytes it may hold in memory before it moves to `path`
        self.memory = memory
        self._map: mmap.mmap | None = None
        if memory > 0:
            self.fd = os.memfd_create(f"openbdr-{path.name}", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, size)
            self._map = mmap.mmap(self.fd, size)  # pages are taken only where written
        else:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.ftruncate(self.fd, size)
        self.bytes_copied = 0
        self._lock = threading.Lock()

    @property
    def in_memory(self) -> bool:
        return self.memory > 0

    def copy(
        self, src: DirectReader, blocks: list[int], pages: dict[int, int] | None = None
    ) -> None:
        """Copy blocks from the device (their current content replaces earlier copies): whole,
        or only the pages `pages` names when the block is staged whole already."""
        blocks = [b for b in blocks if block_span(b, self.size) > 0]
        if self.in_memory and (self.blocks.count() + len(blocks)) * BLOCK_SIZE > self.memory:
            self._spill()
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
        # in memory: read into the map at the block's place; in a file: through a buffer
        mapped = memoryview(self._map) if self._map is not None else None
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
                    pos = base + off
                    if mapped is not None:
                        n += src.read_into(pos, mapped[pos : pos + length])
                        continue
                    assert view is not None
                    got = src.read_into(pos, view[:length])
                    os.pwrite(self.fd, view[:got], pos)
                    n += got
        finally:
            if mapped is not None:
                mapped.release()
            with self._lock:
                self.bytes_copied += n

    def _spill(self) -> None:
        """Move the staged blocks from memory to the file (the budget is spent)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self.size)
            buf = bytearray(BLOCK_SIZE)
            for b in self.blocks.blocks():
                got = os.preadv(self.fd, [memoryview(buf)[: block_span(b, self.size)]],
                                b * BLOCK_SIZE)
                os.pwrite(fd, memoryview(buf)[:got], b * BLOCK_SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._unmap()
        os.close(self.fd)
        self.fd = fd
        self.memory = 0

    def _unmap(self) -> None:
        held, self._map = self._map, None
        _close_map(held)

    def __contains__(self, b: int) -> bool:
        return b in self.blocks

    def read_into(self, offset: int, buf: memoryview) -> int:
        return os.preadv(self.fd, [buf], offset)

    def view(self, offset: int, length: int) -> memoryview | None:
        """Staged bytes in place (in memory only), read-only."""
        if self._map is None:
            return None
        with memoryview(self._map) as whole:
            return whole[offset : offset + length].toreadonly()

    def close(self) -> None:
        """Drop the staged blocks. Their memory (or disk space) is given back in the
        background: freeing ~1 GiB of pages takes a few tenths of a second that the sync,
        committed already, need not wait for."""
        self.path.unlink(missing_ok=True)
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        held, self._map = self._map, None

        def free() -> None:
            _close_map(held)
            os.close(fd)

        threading.Thread(target=free, name="staging-free", daemon=True).start()
