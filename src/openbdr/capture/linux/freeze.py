"""`FIFREEZE`/`FITHAW` of mounted file systems, with a watchdog that always thaws.

Freezing flushes a file system and blocks new writes until thaw: the device then holds a
clean, consistent image. A frozen file system must never stay frozen, whatever happens to
the agent, so the thaw is guaranteed by a separate watchdog process started before the
freeze (`freezewatch.py`): it thaws when the deadline passes or as soon as the agent dies
(its pipe closes).
If the watchdog thawed first, the capture under freeze is not trustworthy and `expired`
says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ...errors import SourceError
from .freezewatch import FIFREEZE, thaw

log = logging.getLogger(__name__)

WATCHDOG = str(Path(__file__).with_name("freezewatch.py"))


@dataclass
class FreezeWindow:
    """When the file systems were frozen and for how long (recorded in the restore point)."""

    mountpoints: list[str]
    started: float = 0.0
    seconds: float = 0.0
    expired: bool = False


def syncfs(mountpoints: list[str]) -> None:
    """Write back dirty data first, so that the passes copy it and the freeze has little to
    flush (a shorter freeze window)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for mp in mountpoints:
        fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            libc.syncfs(fd)
        finally:
            os.close(fd)


class Freezer:
    """Context manager: freeze `mountpoints` (in order), thaw on exit, within `timeout` s."""

    def __init__(self, mountpoints: list[str], timeout: float = 10.0) -> None:
        self.mountpoints = list(mountpoints)
        self.timeout = timeout
        self.window = FreezeWindow(self.mountpoints)
        self._fds: list[int] = []
        self._frozen: list[int] = []
        self._dog: subprocess.Popen[bytes] | None = None
        self._t0 = 0.0

    def __enter__(self) -> Freezer:
        if not self.mountpoints:
            return self
        self._dog = subprocess.Popen(
            # -I -S: the standard library only, so it starts in ~20 ms (not the ~160 ms
            # of the package's imports), which every freeze would wait for
            [sys.executable, "-I", "-S", WATCHDOG, str(self.timeout), *self.mountpoints],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self._dog.stdout is not None
        if self._dog.stdout.readline().strip() != b"ready":
            self._dog.kill()
            self._dog.wait()
            raise SourceError("the freeze watchdog did not start", "check the agent's Python")
        try:
            for mp in self.mountpoints:
                self._fds.append(os.open(mp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            self._t0 = time.monotonic()
            self.window.started = time.time()
            for mp, fd in zip(self.mountpoints, self._fds, strict=True):
                try:
                    fcntl.ioctl(fd, FIFREEZE, 0)
                except OSError as exc:
                    raise SourceError(
                        f"cannot freeze {mp} ({exc.strerror})",
                        "the file system must support FIFREEZE (ext4, XFS, btrfs)",
                    ) from None
                self._frozen.append(fd)
            self._tell(b"frozen\n")
        except BaseException:
            self._release()
            raise
        return self

    def _tell(self, msg: bytes) -> None:
        assert self._dog is not None and self._dog.stdin is not None
        try:
            self._dog.stdin.write(msg)
            self._dog.stdin.flush()
        except BrokenPipeError:
            pass

    def _release(self) -> None:
        """Thaw what we froze (in reverse), stop the watchdog, close everything."""
        expired = False
        for fd in reversed(self._frozen):
            if not thaw(fd):
                expired = True
        if self._frozen:
            self.window.seconds = time.monotonic() - self._t0
        self._frozen.clear()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._dog is not None:
            self._tell(b"thawed\n")
            assert self._dog.stdin is not None and self._dog.stdout is not None
            with contextlib.suppress(BrokenPipeError):  # a watchdog that thawed has exited
                self._dog.stdin.close()
            out = self._dog.stdout.read()
            self._dog.wait()
            self._dog.stdout.close()
            if b"expired" in out:
                expired = True
            self._dog = None
        if expired:
            self.window.expired = True
            log.warning("freeze of %s outlived its %.1f s bound", self.mountpoints, self.timeout)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    @property
    def expired(self) -> bool:
        return self.window.expired
