"""Random-access views of a disk: a restore point read in place, and a throwaway overlay.

`PointImage` reads a point's disk straight from its target (the point reader, through a
small LRU of decoded blocks), so a drill can start in seconds whatever the disk size.
`CowImage` (in `openbdr.overlay`, shared with the sources' log replay) puts a sparse
temporary file in front of any image so that a guest or a service may write while the
restore point stays untouched.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..blocks import BLOCK_SIZE
from ..errors import OpenBDRError
from ..overlay import GRAIN, CowImage, Image
from ..store.manifest import DiskRecord, RestorePoint
from ..store.target import PointReader

__all__ = ["GRAIN", "CowImage", "Image", "PointImage", "ReadOnlyError", "find_disk"]


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
