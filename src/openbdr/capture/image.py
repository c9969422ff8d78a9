"""Source `image`: raw disk image files and block devices.

It holds no change tracker, so every sync lists all data: a file's non-hole extents
(SEEK_DATA/SEEK_HOLE) or a whole block device, narrowed to what the partition table
and file systems mark as used (`volume.analyze`). A sync after the first is then a
hash-compare pass: the pipeline stores only blocks whose hash differs from the
previous point's. The caller is responsible for the image not changing while it is read
(an unmounted image, a stopped VM, or a platform snapshot file): the point is marked
crash-consistent.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..extents import Extent, clip, intersect, normalize
from ..volume.model import DiskLayout
from ..volume.reader import FileReader
from .base import BlockReader, ChangeToken, DiskSnapshot, Host, Snapshot
from .registry import SourceType, register_source

log = logging.getLogger(__name__)

BLKGETSIZE64 = 0x80081272


def device_size(fd: int) -> int:
    """Size in bytes of an open file or block device."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return int(struct.unpack("<Q", buf)[0])
    return st.st_size


def data_extents(fd: int, size: int) -> list[Extent]:
    """Non-hole extents of a file; the whole range when the file system cannot say."""
    out: list[Extent] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append(Extent(start, min(end, size) - start))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return [Extent(0, size)]
        raise
    return normalize(out)


def valid_data(
    reader: BlockReader, present: Iterable[Extent], label: str
) -> tuple[list[Extent], dict[str, Any]]:
    """Valid data of a disk: what its storage holds (`present`: non-hole extents, a
    platform's allocation) narrowed to what the partition table and file systems use
    (`volume.analyze`); with the layout found, for the point. Every full pass of valid
    data (images, agentless platform snapshots) goes through here."""
    from ..volume import analyze

    layout = analyze(reader)
    for note in layout.notes:
        log.info("%s: %s", label, note)
    return intersect(present, clip(layout.valid_extents, reader.size)), layout.to_json()


class ImageDisk(DiskSnapshot):
    def __init__(self, name: str, path: str, valid_only: bool = True) -> None:
        self.name = name
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SourceError(
                f"source {path}: no such file or device",
                "give the path of a disk image or a block device",
            ) from None
        except PermissionError:
            raise SourceError(
                f"source {path}: permission denied", "run as a user who can read it"
            ) from None
        except OSError as exc:
            raise SourceError(f"source {path}: cannot open ({exc.strerror})") from None
        st = os.fstat(self.fd)
        self.is_device = stat.S_ISBLK(st.st_mode)
        if not (self.is_device or stat.S_ISREG(st.st_mode)):
            os.close(self.fd)
            raise SourceError(
                f"source {path}: not a regular file or block device",
                "give the path of a disk image or a block device",
            )
        self._stat = st
        self.size = device_size(self.fd)
        self.reader = FileReader.from_fd(self.fd, self.size, path)
        if self.size == 0:
            os.close(self.fd)
            raise SourceError(
                f"source {path} is empty (0 bytes)",
                "check that the device is attached or the image is the right file",
            )
        self._probe_readable()
        self.valid_only = valid_only
        self.layout: dict[str, Any] | None = None
        #: the partition table and file systems found by the last `extents()`
        self.analysis: DiskLayout | None = None
        self.valid_bytes = self.size

    def _probe_readable(self) -> None:
        buf = bytearray(4096)
        try:
            self.reader.read_into(0, buf)
        except OSError as exc:
            raise SourceError(
                f"source {self.path}: unreadable ({exc.strerror})",
                "check the device and its permissions",
            ) from None

    def extents(self) -> Iterable[Extent]:
        present = [Extent(0, self.size)] if self.is_device else data_extents(self.fd, self.size)
        if not self.valid_only:
            self.valid_bytes = sum(e.length for e in present)
            return present
        from .replay import analyze_replayed

        layout = analyze_replayed(self.reader, self.path)
        self.analysis = layout
        self.layout = layout.to_json()
        why = layout.fallbacks()
        if why:
            self.fallback_reason = "; ".join(
                filter(None, [self.fallback_reason, "valid data: " + "; ".join(why)])
            )
        for note in layout.notes:
            log.info("%s: %s", self.path, note)
        valid = intersect(present, clip(layout.valid_extents, self.size))
        self.valid_bytes = sum(e.length for e in valid)
        return valid

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        return self.reader.read_into(offset, buf)

    @property
    def token(self) -> ChangeToken:
        return ChangeToken("image", self.fingerprint())

    def fingerprint(self) -> dict[str, Any]:
        fp: dict[str, Any] = {"name": self.name, "path": self.path, "size": self.size}
        if not self.is_device:
            fp.update(mtime_ns=self._stat.st_mtime_ns, ino=self._stat.st_ino)
        return fp

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ImageSnapshot(Snapshot):
    def __init__(self, disks: list[ImageDisk]) -> None:
        self.disks = list(disks)
        self.consistency = "crash"

    def release(self) -> None:
        for d in self.disks:
            assert isinstance(d, ImageDisk)
            d.close()


class ImageHost(Host):
    def __init__(self, name: str, paths: list[str], valid_only: bool = True) -> None:
        if not paths:
            raise SourceError("no source given", "name at least one disk image or block device")
        self.name = name
        self.paths = [str(Path(p).absolute()) for p in paths]
        self.valid_only = valid_only

    def snapshot(self, since: ChangeToken | None) -> ImageSnapshot:
        disks: list[ImageDisk] = []
        try:
            for i, p in enumerate(self.paths):
                disk = ImageDisk(f"disk{i}", p, self.valid_only)
                if since is not None:
                    disk.fallback_reason = (
                        "no change tracking: hash-compare with the previous point"
                    )
                disks.append(disk)
        except BaseException:
            for d in disks:
                d.close()
            raise
        return ImageSnapshot(disks)

    def describe(self) -> str:
        return "image:" + ",".join(self.paths)


def open_host(name: str, paths: list[str], valid_only: bool = True) -> ImageHost:
    return ImageHost(name, paths, valid_only)


def _validate(spec: dict[str, Any]) -> None:
    paths = spec.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise SourceError(
            "source type image needs `paths`: a list of disk image or block device paths",
            'e.g. {"type": "image", "paths": ["/var/lib/images/web1.img"]}',
        )


def _open(name: str, spec: dict[str, Any]) -> ImageHost:
    _validate(spec)
    return open_host(name, list(spec["paths"]), valid_only=bool(spec.get("valid_only", True)))


register_source(
    SourceType(
        "image",
        _open,
        _validate,
        "raw disk images or block devices readable where the job runs",
        {"paths": "list of paths", "valid_only": "bool: only blocks file systems use"},
        parse=lambda arg: {"type": "image", "paths": [p for p in arg.split(",") if p]},
    )
)
