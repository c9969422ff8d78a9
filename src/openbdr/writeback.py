"""Start the write-out of a file's dirty pages while it is still being written.

With much RAM, a restore's blocks can all sit in the page cache until the final fsync,
which then writes gigabytes while nothing else happens: decoding and writing run one
after the other. Asking the kernel every few tens of MiB to begin write-out
(sync_file_range with SYNC_FILE_RANGE_WRITE, which does not wait for completion) makes
the device write while the next blocks are decoded, and keeps the final fsync short.
It is only a hint: durability still comes from fsync.
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
SYNC_FILE_RANGE_WRITE = 2

#: bytes written between two write-out requests
DEFAULT_EVERY = 64 << 20


class Writeback:
    """Counts bytes written to `fd` and starts their write-out every `every` bytes."""

    def __init__(self, fd: int, every: int = DEFAULT_EVERY) -> None:
        self.fd = fd
        self.every = every
        self._since = 0
        self._enabled = True

    def wrote(self, n: int) -> None:
        self._since += n
        if self._since < self.every or not self._enabled:
            return
        self._since = 0
        self._enabled = start_writeback(self.fd)


def start_writeback(fd: int) -> bool:
    """Ask the kernel to begin writing `fd`'s dirty pages (without waiting); False when the
    file system cannot (fsync alone will do)."""
    if _libc.sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP):
            raise OSError(err, f"sync_file_range: {os.strerror(err)}")
        return False
    return True
