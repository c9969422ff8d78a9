"""Per-point, per-disk index: one 32-byte chunk id per 1 MiB block (zero id = zero block).

    magic "OBIX" | version u8 | 3 pad | block_size u32 | disk_size u64 | blocks u64
    | ids (32 x blocks) | BLAKE3(header + ids)

The trailer makes a torn or altered index fail loudly instead of restoring wrong blocks.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import blake3

from ..blocks import BLOCK_SIZE, block_count, block_span
from ..chunk import ID_SIZE, ZERO_ID
from ..errors import CorruptionError

MAGIC = b"OBIX"
VERSION = 1
HEADER = struct.Struct("<4sB3xIQQ")


class DiskIndex:
    """A mutable index held as one bytearray (32 bytes per block: 32 MiB per TiB of disk)."""

    def __init__(self, size: int, block_size: int = BLOCK_SIZE, ids: bytearray | None = None):
        self.size = size
        self.block_size = block_size
        self.count = block_count(size, block_size)
        if ids is None:
            ids = bytearray(self.count * ID_SIZE)
        if len(ids) != self.count * ID_SIZE:
            raise ValueError("index length does not match disk size")
        self.ids = ids

    def __getitem__(self, i: int) -> bytes:
        return bytes(self.ids[i * ID_SIZE : (i + 1) * ID_SIZE])

    def __setitem__(self, i: int, cid: bytes) -> None:
        self.ids[i * ID_SIZE : (i + 1) * ID_SIZE] = cid

    def resized(self, size: int) -> DiskIndex:
        """The same blocks for a disk that grew (new blocks zero) or shrank (tail dropped).

        A last block that was short and is now longer (or shorter) cannot keep its id: its
        content length changed, so it is cleared and must be read again.
        """
        n = block_count(size, self.block_size)
        ids = bytearray(self.ids[: n * ID_SIZE])
        ids.extend(bytes(n * ID_SIZE - len(ids)))
        out = DiskIndex(size, self.block_size, ids)
        for i in {self.count - 1, n - 1}:
            if 0 <= i < min(n, self.count) and block_span(i, size, self.block_size) != block_span(
                i, self.size, self.block_size
            ):
                out[i] = ZERO_ID
        return out

    def copy(self) -> DiskIndex:
        return DiskIndex(self.size, self.block_size, bytearray(self.ids))

    def nonzero(self) -> Iterator[tuple[int, bytes]]:
        """(block, id) of every stored block."""
        ids = self.ids
        for i in range(self.count):
            cid = bytes(ids[i * ID_SIZE : (i + 1) * ID_SIZE])
            if cid != ZERO_ID:
                yield i, cid

    def unique_ids(self) -> set[bytes]:
        return {cid for _, cid in self.nonzero()}

    def digest(self) -> str:
        """BLAKE3 of the index as stored (its trailer): what a manifest records of it."""
        head = HEADER.pack(MAGIC, VERSION, self.block_size, self.size, self.count)
        return blake3.blake3(head + bytes(self.ids)).hexdigest()

    def to_bytes(self) -> bytes:
        head = HEADER.pack(MAGIC, VERSION, self.block_size, self.size, self.count)
        body = head + bytes(self.ids)
        return body + blake3.blake3(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "index") -> DiskIndex:
        if len(data) < HEADER.size + 32:
            raise CorruptionError(f"{where}: truncated ({len(data)} bytes)")
        magic, version, block_size, size, count = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CorruptionError(f"{where}: not an index (bad magic)")
        if version != VERSION:
            raise CorruptionError(f"{where}: unknown index format version {version}")
        body, trailer = data[:-32], data[-32:]
        if blake3.blake3(body).digest() != trailer:
            raise CorruptionError(f"{where}: checksum mismatch")
        ids = bytearray(body[HEADER.size :])
        if len(ids) != count * ID_SIZE or block_count(size, block_size) != count:
            raise CorruptionError(f"{where}: length does not match its header")
        return cls(size, block_size, ids)
