"""Block devices as the kernel names them: numbers, parent disk, partition start, mounts."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ...errors import SourceError
from ..image import device_size

SYSFS = Path("/sys/dev/block")


@dataclass(frozen=True)
class BlockDevice:
    """A protected device: a whole disk, or a partition seen through its parent disk."""

    path: str
    name: str
    major: int
    minor: int
    size: int
    #: the whole disk the requests reach (itself for a whole disk)
    disk_major: int
    disk_minor: int
    #: first byte of this device on its disk (0 for a whole disk)
    start: int

    @property
    def is_partition(self) -> bool:
        return (self.major, self.minor) != (self.disk_major, self.disk_minor)


@dataclass(frozen=True)
class Mount:
    mountpoint: str
    fstype: str
    read_only: bool
    major: int
    minor: int


def _sys(major: int, minor: int) -> Path:
    return (SYSFS / f"{major}:{minor}").resolve()


def resolve(path: str) -> BlockDevice:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(
            f"device {path}: {exc.strerror}", "give the path of a block device"
        ) from None
    if not stat.S_ISBLK(st.st_mode):
        raise SourceError(
            f"{path} is not a block device",
            "the agent protects block devices (use `openbdr sync` for image files)",
        )
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    sysdir = _sys(major, minor)
    start = 0
    dmaj, dmin = major, minor
    if (sysdir / "partition").exists():
        start = int((sysdir / "start").read_text()) * 512
        dmaj, dmin = (int(x) for x in (sysdir.parent / "dev").read_text().strip().split(":"))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = device_size(fd)
    finally:
        os.close(fd)
    return BlockDevice(
        path=path,
        name=sysdir.name,
        major=major,
        minor=minor,
        size=size,
        disk_major=dmaj,
        disk_minor=dmin,
        start=start,
    )


def _unescape(s: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mounts() -> list[Mount]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        if len(f) < 6 or len(r) < 3:
            continue
        major, minor = (int(x) for x in f[2].split(":"))
        opts = f[5].split(",") + r[2].split(",")
        out.append(Mount(_unescape(f[4]), r[0], "ro" in opts, major, minor))
    return out


def mounts_of(dev: BlockDevice) -> list[Mount]:
    """File systems mounted from the device or, for a whole disk, from its partitions.

    A file system mounted twice (bind mounts) is listed once: freezing it once is enough.
    """
    seen: set[tuple[int, int]] = set()
    out = []
    for m in mounts():
        key = (m.major, m.minor)
        if key in seen:
            continue
        if key == (dev.major, dev.minor) or (
            not dev.is_partition and _parent(m.major, m.minor) == (dev.major, dev.minor)
        ):
            seen.add(key)
            out.append(m)
    return out


def _parent(major: int, minor: int) -> tuple[int, int] | None:
    sysdir = _sys(major, minor)
    if not (sysdir / "partition").exists():
        return None
    a, b = (sysdir.parent / "dev").read_text().strip().split(":")
    return int(a), int(b)


def span_on_disk(major: int, minor: int) -> tuple[int, int]:
    """(start, length) in bytes of a block device on its disk (start 0 for a whole disk)."""
    sysdir = _sys(major, minor)
    start = int((sysdir / "start").read_text()) * 512 if (sysdir / "partition").exists() else 0
    return start, int((sysdir / "size").read_text()) * 512


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def device_of_path(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev)
