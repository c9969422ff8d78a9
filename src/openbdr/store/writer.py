"""What both modes keep for a disk being synced: its block hashes and which blocks are done.

Object mode and block mode differ only in how a block is stored (`put`); the index (the
keyed hash of every block, started from the parent's for an incremental), the done-bitmap
a resumed sync skips by, and the parent's hashes that trust-but-verify and dedup compare
with are the same, and live here once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..blocks import BLOCK_SIZE, block_count
from .index import DiskIndex
from .manifest import DiskRecord
from .target import DiskWriter, Mode


class IndexedDiskWriter(DiskWriter):
    def __init__(
        self,
        no: int,
        name: str,
        size: int,
        fingerprint: dict[str, Any],
        mode: Mode,
        prev: DiskIndex | None,
        resume: tuple[bytes, bytes] | None,
    ) -> None:
        self.no = no
        self.size = size
        self.fingerprint = fingerprint
        self.mode = mode
        #: the parent's hashes, fitted to this size (None: no parent disk)
        self.prev = prev.resized(size) if prev is not None else None
        n = block_count(size)
        if resume is not None:
            self.index = DiskIndex(size, ids=bytearray(resume[0]))
            self.done_bits = bytearray(resume[1])
        else:
            incremental = mode == "incremental" and self.prev is not None
            self.index = self.prev.copy() if incremental and self.prev else DiskIndex(size)
            self.done_bits = bytearray((n + 7) // 8)
        self.record = DiskRecord(
            index=no,
            name=name,
            size=size,
            source=str(fingerprint),
            index_key="",
            block_size=BLOCK_SIZE,
            mode=mode,
        )

    def previous(self, i: int) -> bytes | None:
        return None if self.prev is None else self.prev[i]

    def previous_blocks(self) -> Iterator[int]:
        return (i for i, _ in self.prev.nonzero()) if self.prev is not None else iter(())

    def is_done(self, i: int) -> bool:
        return bool(self.done_bits[i >> 3] & (1 << (i & 7)))

    def done(self, i: int, cid: bytes) -> None:
        self.index[i] = cid
        self.done_bits[i >> 3] |= 1 << (i & 7)

    def undo(self, blocks: Iterable[int]) -> None:
        for i in blocks:
            self.done_bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    def reset(self, mode: Mode, reason: str) -> None:
        self.index = DiskIndex(self.size)
        self.done_bits = bytearray(len(self.done_bits))
        self.mode = self.record.mode = mode
        self.record.fallback_reason = reason
