"""Reads of a live block device that bypass the page cache (`O_DIRECT`).

A file system writes file data to the device without going through the device's page
cache, so a buffered read of the device can return a block as it was when first cached.
Every read of a live disk therefore goes to the device, through an aligned bounce buffer
(the sync engine's buffers are not page-aligned); a page-aligned destination (a staging
map) is read into directly. Bytes read are counted: incremental syncs are judged by how
little they read.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading

from ...errors import SourceError

ALIGN = 4096
BOUNCE = 1 << 20


def _address(view: memoryview) -> int:
    """Where a writable buffer starts in memory."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class DirectReader:
    """`BlockReader` over a block device, uncached; safe to share between threads."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self._size = size
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
            self.direct = True
        except OSError as exc:
            if exc.errno != 22:  # EINVAL: no O_DIRECT here; fall back to dropping the cache
                raise SourceError(f"cannot open {path} ({exc.strerror})") from None
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self.direct = False
        self._local = threading.local()
        self.bytes_read = 0
        self._count = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def _bounce(self) -> mmap.mmap:
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = mmap.mmap(-1, BOUNCE + ALIGN)  # anonymous maps are page-aligned
            self._local.buf = buf
        return buf

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self._size - offset))
        if want == 0:
            return 0
        if not self.direct:
            os.posix_fadvise(self.fd, offset, want, os.POSIX_FADV_DONTNEED)
            got = os.preadv(self.fd, [view[:want]], offset)
            self._add(got)
            return got
        if offset % ALIGN == 0 and want % ALIGN == 0 and _address(view) % ALIGN == 0:
            got = 0
            while got < want:  # short only at the device's end
                n = os.preadv(self.fd, [view[got:want]], offset + got)
                if n <= 0:
                    break
                got += n
            self._add(got)
            return got
        bounce = memoryview(self._bounce())
        got = 0
        while got < want:
            pos = offset + got
            start = pos - pos % ALIGN
            end = min(start + BOUNCE, -(-(offset + want) // ALIGN) * ALIGN)
            n = os.preadv(self.fd, [bounce[: end - start]], start)
            if n <= pos - start:
                break
            take = min(n - (pos - start), want - got)
            view[got : got + take] = bounce[pos - start : pos - start + take]
            got += take
        self._add(got)
        return got

    def _add(self, n: int) -> None:
        with self._count:
            self.bytes_read += n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
