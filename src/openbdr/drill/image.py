"""Random-access views of a disk: a restore point read in place, and a throwaway overlay.

`PointImage` reads a point's disk straight from its target (the point reader, through a
small LRU of decoded blocks), so a drill can start in seconds whatever the
disk size. `CowImage` puts a sparse temporary file in front of any image so that a guest
or a service may write while the restore point stays untouched.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from typing import Protocol

from ..blocks import BLOCK_SIZE, ZERO_BLOCK
from ..errors import OpenBDRError
from ..store.manifest import DiskRecord, RestorePoint
from ..store.target import PointReader


class Image(Protocol):
    """What the NBD server and the FUSE file serve."""

    size: int
    writable: bool

    def pread(self, offset: int, length: int) -> bytes: ...

    def pwrite(self, offset: int, data: bytes | memoryview) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class ReadOnlyError(OpenBDRError):
    """A write reached a read-only image."""


def find_disk(point: RestorePoint, disk: int | str | None) -> DiskRecord:
    """A point's disk by index or name (the only one when `disk` is None)."""
    if disk is None:
        if len(point.disks) != 1:
            raise OpenBDRError(
                f"point {point.id} has {len(point.disks)} disks",
                "name one with --disk INDEX",
            )
        return point.disks[0]
    for d in point.disks:
        if str(d.index) == str(disk) or d.name == disk:
            return d
    raise OpenBDRError(
        f"point {point.id} has no disk {disk}",
        f"it has disks {', '.join(f'{d.index} ({d.name})' for d in point.disks)}",
    )


class PointImage:
    """A point's disk read through the target's point reader, with a small LRU of blocks."""

    writable = False

    def __init__(self, reader: PointReader, cache_blocks: int = 64) -> None:
        self.reader = reader
        self.point = reader.point
        self.disk = reader.disk
        self.size = reader.size
        self.cache_blocks = cache_blocks
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.fetches = 0

    def block(self, i: int) -> bytes:
        """Block `i` decoded (short for the last block of an odd-sized disk)."""
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
        data = self.reader.read_block(i)
        with self._lock:
            self.fetches += 1
            self._cache[i] = data
            while len(self._cache) > self.cache_blocks:
                self._cache.popitem(last=False)
        return data

    def pread(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        if first == last:
            base = first * BLOCK_SIZE
            return self.block(first)[offset - base : end - base]
        parts = []
        for i in range(first, last + 1):
            base = i * BLOCK_SIZE
            blk = self.block(i)
            parts.append(blk[max(0, offset - base) : min(len(blk), end - base)])
        return b"".join(parts)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        raise ReadOnlyError(f"point {self.point.id} is read-only")

    def write_zeroes(self, offset: int, length: int) -> None:
        raise ReadOnlyError(f"point {self.point.id} is read-only")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
        self.reader.close()


GRAIN = 4096


class CowImage:
    """Copy-on-write overlay: writes land in a sparse temp file, tracked per 4 KiB grain.

    The temp file is unlinked at once, so nothing is left behind even if the process is
    killed. Partial-grain writes first copy the grain from the base.
    """

    writable = True

    def __init__(self, base: Image, tmpdir: str | None = None) -> None:
        self.base = base
        self.size = base.size
        fd, path = tempfile.mkstemp(prefix="openbdr-cow-", dir=tmpdir)
        os.unlink(path)
        self.fd = fd
        os.ftruncate(fd, self.size)
        self.dirty = bytearray((self.size + GRAIN - 1) // GRAIN)
        self._lock = threading.Lock()
        self.written = 0

    def pread(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        g0, g1 = offset // GRAIN, (end - 1) // GRAIN + 1
        if self.dirty.find(1, g0, g1) < 0:
            return self.base.pread(offset, end - offset)
        out = bytearray(end - offset)
        g = g0
        while g < g1:
            state = self.dirty[g]
            nxt = self.dirty.find(0 if state else 1, g, g1)
            nxt = g1 if nxt < 0 else nxt
            a, b = max(offset, g * GRAIN), min(end, nxt * GRAIN)
            if state:
                got = os.pread(self.fd, b - a, a)
                out[a - offset : a - offset + len(got)] = got
            else:
                out[a - offset : b - offset] = self.base.pread(a, b - a)
            g = nxt
        return bytes(out)

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise OpenBDRError(f"write beyond the end of the disk ({offset}+{length})")

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._check(offset, len(view))
        if not len(view):
            return
        end = offset + len(view)
        g0, g1 = offset // GRAIN, (end - 1) // GRAIN + 1
        with self._lock:
            for g in {g0, g1 - 1}:
                gs = g * GRAIN
                ge = min(self.size, gs + GRAIN)
                if not self.dirty[g] and (offset > gs or end < ge):
                    os.pwrite(self.fd, self.base.pread(gs, ge - gs), gs)
                    self.dirty[g] = 1
            os.pwrite(self.fd, view, offset)
            self.dirty[g0:g1] = b"\x01" * (g1 - g0)
            self.written += len(view)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length)
        pos = offset
        while pos < offset + length:
            n = min(BLOCK_SIZE, offset + length - pos)
            self.pwrite(pos, ZERO_BLOCK[:n])
            pos += n

    def flush(self) -> None:
        pass  # the overlay is thrown away: nothing to make durable

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
