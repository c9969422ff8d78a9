"""Blocks copied during a capture's later passes: the frozen state of what changed.

A sparse local file at the disk's own offsets, plus the set of blocks it holds. It lives in
the agent's state directory, never on a protected file system (which may be frozen while
it is written), and is deleted when the snapshot is released.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...blocks import BLOCK_SIZE, block_span
from .bitmap import DirtyBitmap
from .direct import DirectReader


class Staging:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.blocks = DirtyBitmap(size)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.ftruncate(self.fd, size)
        self.bytes_copied = 0

    def copy(self, src: DirectReader, blocks: list[int]) -> None:
        """Copy whole blocks from the device (their current content replaces earlier copies)."""
        buf = bytearray(BLOCK_SIZE)
        view = memoryview(buf)
        for b in blocks:
            span = block_span(b, self.size)
            if span <= 0:
                continue
            got = src.read_into(b * BLOCK_SIZE, view[:span])
            os.pwrite(self.fd, view[:got], b * BLOCK_SIZE)
            self.blocks.add(b)
            self.bytes_copied += got

    def __contains__(self, b: int) -> bool:
        return b in self.blocks

    def read_into(self, offset: int, buf: memoryview) -> int:
        return os.preadv(self.fd, [buf], offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)
