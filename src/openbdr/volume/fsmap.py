"""The kernel's allocation map of a mounted file system (`FS_IOC_GETFSMAP`).

While a file system is mounted, its on-disk structures may be contradicted by a log the
kernel has not written back (XFS keeps committed transactions in its log even when
frozen), so parsing them would either be wrong or fall back to the whole volume. XFS and
ext4 answer `FS_IOC_GETFSMAP` from their live, in-memory state instead: a list of
records covering the device, each with an owner (metadata, an inode, the log, free
space, or "unknown" = allocated without reverse mapping). Used = the volume minus the
records owned by *free space*: whatever is not explicitly free is kept (never less).

Records are read a page at a time (`fmh_keys[0]` = the last record returned, as
`xfs_io -c fsmap` does), so memory stays bounded on fragmented file systems.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from ..extents import Extent, normalize, subtract

#: owner of free space: FMR_OWNER(0, 1)
FMR_OWN_FREE = 1
FMR_OF_LAST = 0x20
#: records per ioctl call (64 bytes each)
PAGE = 1024


class _Fsmap(ctypes.Structure):
    _fields_ = [
        ("fmr_device", ctypes.c_uint32),
        ("fmr_flags", ctypes.c_uint32),
        ("fmr_physical", ctypes.c_uint64),
        ("fmr_owner", ctypes.c_uint64),
        ("fmr_offset", ctypes.c_uint64),
        ("fmr_length", ctypes.c_uint64),
        ("fmr_reserved", ctypes.c_uint64 * 3),
    ]


class _Head(ctypes.Structure):
    _fields_ = [
        ("fmh_iflags", ctypes.c_uint32),
        ("fmh_oflags", ctypes.c_uint32),
        ("fmh_count", ctypes.c_uint32),
        ("fmh_entries", ctypes.c_uint32),
        ("fmh_reserved", ctypes.c_uint64 * 6),
        ("fmh_keys", _Fsmap * 2),
    ]


def _iowr(kind: str, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord(kind) << 8) | nr


FS_IOC_GETFSMAP = _iowr("X", 59, ctypes.sizeof(_Head))  # 0xC0C0583B


class FsmapUnsupported(OSError):
    """The file system (or kernel) does not implement FS_IOC_GETFSMAP."""


def encode_dev(major: int, minor: int) -> int:
    """The kernel's `new_encode_dev`, which `fmr_device` uses."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def free_extents(mountpoint: str, major: int, minor: int) -> list[Extent]:
    """Free space of the file system mounted on `mountpoint`, on device `major:minor`
    (byte offsets within that device). Raises `FsmapUnsupported` when the file system
    has no GETFSMAP (btrfs, vfat, …), OSError on other failures."""
    want = encode_dev(major, minor)
    buf = ctypes.create_string_buffer(ctypes.sizeof(_Head) + PAGE * ctypes.sizeof(_Fsmap))
    head = _Head.from_buffer(buf)
    recs = (_Fsmap * PAGE).from_buffer(buf, ctypes.sizeof(_Head))
    high = head.fmh_keys[1]
    high.fmr_device = 0xFFFFFFFF
    high.fmr_flags = 0xFFFFFFFF
    high.fmr_physical = high.fmr_owner = high.fmr_offset = 0xFFFFFFFFFFFFFFFF
    head.fmh_count = PAGE
    free: list[tuple[int, int]] = []
    fd = os.open(mountpoint, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while True:
            try:
                fcntl.ioctl(fd, FS_IOC_GETFSMAP, buf)
            except OSError as exc:
                if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
                    raise FsmapUnsupported(exc.errno, f"GETFSMAP on {mountpoint}") from None
                raise
            n = head.fmh_entries
            if n == 0:
                break
            for i in range(n):
                r = recs[i]
                if r.fmr_device == want and r.fmr_owner == FMR_OWN_FREE and r.fmr_length:
                    free.append((r.fmr_physical, r.fmr_length))
            last = recs[n - 1]
            if last.fmr_flags & FMR_OF_LAST:
                break
            ctypes.memmove(
                ctypes.addressof(head.fmh_keys[0]), ctypes.addressof(last), ctypes.sizeof(_Fsmap)
            )
    finally:
        os.close(fd)
    return normalize(free)


def used_extents(mountpoint: str, major: int, minor: int, size: int, base: int = 0) -> list[Extent]:
    """The volume of `size` bytes minus its free space, shifted to start at `base`."""
    used = subtract([Extent(0, size)], free_extents(mountpoint, major, minor))
    return [Extent(base + e.offset, e.length) for e in used]
