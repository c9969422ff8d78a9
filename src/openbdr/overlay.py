"""A throwaway copy-on-write overlay in front of a disk, served as a FUSE file.

Shared by the drills (a restore point's disks, `drill.fusefile`) and the sources (an
unmounted volume whose log must be replayed before its bitmaps can be read,
`capture.replay`): the kernel gets a block device by a loop device over the FUSE file
(there is no nbd module here), a file system on it may write (journal replay), and the
writes land in a sparse temporary file that is unlinked at once: the base is never
written, and nothing is left even after `kill -9`.

    python -m openbdr.overlay SOURCE OFFSET LENGTH MOUNTPOINT [--tmpdir DIR]

serves `MOUNTPOINT/volume`: bytes OFFSET..OFFSET+LENGTH of SOURCE (a file or a block
device, opened read-only) behind an overlay, until the mount is unmounted.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import tempfile
import threading
import time
from typing import Any, Protocol

from .blocks import BLOCK_SIZE, ZERO_BLOCK
from .errors import OpenBDRError

#: the name of the one file `python -m openbdr.overlay` serves
VOLUME = "volume"


class Image(Protocol):
    """What the NBD server and the FUSE file serve."""

    size: int
    writable: bool

    def pread(self, offset: int, length: int) -> bytes: ...

    def pwrite(self, offset: int, data: bytes | memoryview) -> None: ...

    def write_zeroes(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


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


class RangeImage:
    """Bytes `offset`..`offset + length` of a file or block device, read-only."""

    writable = False

    def __init__(self, path: str, offset: int, length: int) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.offset = offset
        self.size = length

    def pread(self, offset: int, length: int) -> bytes:
        n = max(0, min(length, self.size - offset))
        return os.pread(self.fd, n, self.offset + offset) if n else b""

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        raise OpenBDRError("the overlay's base is read-only")

    def write_zeroes(self, offset: int, length: int) -> None:
        raise OpenBDRError("the overlay's base is read-only")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _ops(images: dict[str, Image]) -> Any:
    import mfusepy as fuse

    now = time.time_ns()

    class Ops(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def _img(self, path: str) -> Image:
            img = images.get(path.lstrip("/"))
            if img is None:
                raise fuse.FuseOSError(errno.ENOENT)
            return img

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            if path == "/":
                return {
                    "st_mode": stat.S_IFDIR | 0o555,
                    "st_nlink": 2,
                    "st_atime": now,
                    "st_mtime": now,
                    "st_ctime": now,
                }
            img = self._img(path)
            mode = 0o644 if img.writable else 0o444
            return {
                "st_mode": stat.S_IFREG | mode,
                "st_nlink": 1,
                "st_size": img.size,
                "st_atime": now,
                "st_mtime": now,
                "st_ctime": now,
                "st_blocks": (img.size + 511) // 512,
            }

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *images]

        def open(self, path: str, flags: int) -> int:
            img = self._img(path)
            if flags & (os.O_WRONLY | os.O_RDWR) and not img.writable:
                raise fuse.FuseOSError(errno.EROFS)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            try:
                return self._img(path).pread(offset, size)
            except Exception as exc:
                print(f"openbdr fuse: read {path} {offset}+{size}: {exc}", file=sys.stderr)
                raise fuse.FuseOSError(errno.EIO) from None

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            img = self._img(path)
            if not img.writable:
                raise fuse.FuseOSError(errno.EROFS)
            if offset + len(data) > img.size:
                raise fuse.FuseOSError(errno.ENOSPC)
            img.pwrite(offset, data)
            return len(data)

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            if length != self._img(path).size:
                raise fuse.FuseOSError(errno.EPERM)

        def flush(self, path: str, fh: int) -> None:
            return None

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            return None

        def statfs(self, path: str) -> dict[str, int]:
            return {
                "f_bsize": 4096,
                "f_frsize": 4096,
                "f_blocks": 0,
                "f_bfree": 0,
                "f_bavail": 0,
                "f_namemax": 255,
            }

    return Ops()


def serve(images: dict[str, Image], mountpoint: str, writable: bool) -> None:
    """Blocks until the mount is unmounted."""
    import mfusepy as fuse

    fuse.FUSE(
        _ops(images),
        mountpoint,
        foreground=True,
        nothreads=False,
        ro=not writable,
        fsname="openbdr",
        subtype="openbdr",
        direct_io=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m openbdr.overlay")
    ap.add_argument("source")
    ap.add_argument("offset", type=int)
    ap.add_argument("length", type=int)
    ap.add_argument("mountpoint")
    ap.add_argument("--tmpdir")
    args = ap.parse_args(argv)
    base = RangeImage(args.source, args.offset, args.length)
    serve({VOLUME: CowImage(base, args.tmpdir)}, args.mountpoint, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
