"""The freeze watchdog: a process of its own that thaws at the deadline or when the agent
goes away, so a file system never stays frozen.

Run by path with `python -I -S`, it must import nothing but the standard library.
"""

import contextlib
import errno
import fcntl
import os
import select
import sys
import time

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def thaw(fd: int) -> bool:
    """Thaw; False if it was not frozen (someone else thawed it)."""
    try:
        fcntl.ioctl(fd, FITHAW, 0)
        return True
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise


def _thaw_all(fds: list[int]) -> None:
    """Thaw, then let go of the mounts at once (an unmount right after must not be busy)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            thaw(fd)
    for fd in fds:
        os.close(fd)
    fds.clear()


def _watchdog(timeout: float, mountpoints: list[str]) -> int:
    """Runs as its own process: thaw at the deadline or when the agent goes away."""
    fds = []
    for mp in mountpoints:
        with contextlib.suppress(OSError):
            fds.append(os.open(mp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    os.write(1, b"ready\n")
    stdin = sys.stdin.buffer.raw  # type: ignore[attr-defined,union-attr]
    buf = b""
    deadline: float | None = None
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([stdin], [], [], wait)
        if not ready:  # deadline passed while frozen
            _thaw_all(fds)
            os.write(1, b"expired\n")
            return 0
        data = os.read(stdin.fileno(), 64)
        if not data:  # the agent is gone: never leave a file system frozen
            _thaw_all(fds)
            return 0
        buf += data
        if b"thawed" in buf:
            return 0
        if b"frozen" in buf and deadline is None:
            deadline = time.monotonic() + timeout


if __name__ == "__main__":
    sys.exit(_watchdog(float(sys.argv[1]), sys.argv[2:]))
