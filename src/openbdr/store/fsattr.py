"""The file system's immutable attribute (`FS_IMMUTABLE_FL`, what `chattr +i` sets) and a
retain-until date recorded on each file.

An immutable file cannot be written, renamed, linked or unlinked, not even by root, until
a process with CAP_LINUX_IMMUTABLE clears the attribute (ext4, XFS, btrfs support it).
The date lives in an extended attribute of the file itself (`user.openbdr.retain_until`),
which the attribute also freezes, so whoever cannot clear the attribute cannot shorten
the date either. This is the closest a local directory gets to S3 Object Lock: it stops
processes without that capability on the repository host, never root there
(docs/security.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from datetime import UTC, datetime
from pathlib import Path

from ..errors import RepositoryError

FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long) in linux/fs.h
FS_IOC_SETFLAGS = 0x40086602  # _IOW('f', 2, long)
FS_IMMUTABLE_FL = 0x00000010
XATTR = "user.openbdr.retain_until"
#: the date of an immutable file that carries none (set by hand): never expires on its own
FOREVER = datetime.max.replace(tzinfo=UTC)


def _open(path: str | os.PathLike[str]) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)


def _get(fd: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))[0])


def is_immutable(path: str | os.PathLike[str]) -> bool:
    """False also for a file that is gone or a file system without flags."""
    try:
        fd = _open(path)
    except FileNotFoundError:
        return False
    try:
        return bool(_get(fd) & FS_IMMUTABLE_FL)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)


def set_immutable(path: str | os.PathLike[str], on: bool) -> None:
    fd = _open(path)
    try:
        flags = _get(fd)
        new = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        if new != flags:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", new))
    finally:
        os.close(fd)


def retain_until(path: str | os.PathLike[str]) -> datetime | None:
    """The date recorded on the file, if any (an unreadable one counts as none)."""
    try:
        raw = os.getxattr(path, XATTR, follow_symlinks=False)
        t = datetime.fromisoformat(raw.decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def record(path: str | os.PathLike[str], until: datetime) -> None:
    """Write the date (the file must not be immutable yet)."""
    os.setxattr(path, XATTR, until.astimezone(UTC).isoformat().encode(), follow_symlinks=False)


def held_until(path: str | os.PathLike[str]) -> datetime | None:
    """The retain-until date of an immutable file (`FOREVER` when it records none);
    None when the file is not immutable (or does not exist)."""
    if not is_immutable(path):
        return None
    return retain_until(path) or FOREVER


def probe(directory: Path) -> None:
    """Refuse, in one line, a directory whose file system or caller cannot make files
    immutable (tmpfs before Linux 6.0, vfat, NFS, or no CAP_LINUX_IMMUTABLE)."""
    test = directory / ".tmp-immutable-probe"
    test.unlink(missing_ok=True)
    test.write_bytes(b"")
    try:
        try:
            record(test, datetime.now(UTC))
            set_immutable(test, True)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise RepositoryError(
                    f"{directory}: setting the immutable attribute needs root "
                    "(CAP_LINUX_IMMUTABLE)",
                    "run `openbdr repo init --object-lock` and the repository's syncs as root",
                ) from None
            raise RepositoryError(
                f"{directory}: this file system cannot make files immutable "
                f"({os.strerror(exc.errno or 0)})",
                "put the repository on ext4, XFS or btrfs, or use an S3 bucket with Object Lock",
            ) from None
        if not is_immutable(test):
            raise RepositoryError(
                f"{directory}: this file system ignores the immutable attribute",
                "put the repository on ext4, XFS or btrfs, or use an S3 bucket with Object Lock",
            )
    finally:
        with contextlib.suppress(OSError):
            set_immutable(test, False)
        test.unlink(missing_ok=True)
