"""A restore point's disks as files in a FUSE mount: `<mountpoint>/<disk name>`.

This is how the host gets a block device of a point without an nbd kernel module:
a loop device over the FUSE file. It runs in its own process
(`python -m openbdr.drill.fusefile`) so that a mount outlives nothing it should not:
unmounting ends the process, and killing the process ends the mount.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import time
from typing import Any

from .image import CowImage, Image, PointImage


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
    from ..store.target import open_target

    ap = argparse.ArgumentParser(prog="python -m openbdr.drill.fusefile")
    ap.add_argument("repo")
    ap.add_argument("host")
    ap.add_argument("point")
    ap.add_argument("mountpoint")
    ap.add_argument("--overlay", action="store_true", help="writable, writes thrown away")
    ap.add_argument("--tmpdir")
    args = ap.parse_args(argv)
    repo = open_target(args.repo)
    point = repo.point(args.host, args.point)
    images: dict[str, Image] = {}
    for d in point.disks:
        img: Image = PointImage(repo.reader(point, d))
        if args.overlay:
            img = CowImage(img, args.tmpdir)
        images[d.name] = img
    serve(images, args.mountpoint, args.overlay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
