"""CRC-32C (Castagnoli): the checksum ext4, XFS and btrfs put on their metadata.

Verifying it is what lets a parser tell a bitmap or tree block that the file system wrote
from one that was damaged, and so skip nothing a file needs. `google-crc32c` does it in C;
the pure-Python table is the fallback for a missing wheel (fine for sectors, slow for bulk).
"""

from __future__ import annotations

from collections.abc import Callable

MASK = 0xFFFFFFFF


def _table() -> tuple[int, ...]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return tuple(out)


_TABLE = _table()


def _py_extend(crc: int, data: bytes) -> int:
    c = crc ^ MASK
    table = _TABLE
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ MASK


_extend: Callable[[int, bytes], int]
try:
    import google_crc32c

    def _extend(crc: int, data: bytes) -> int:
        return int(google_crc32c.extend(crc, data))

    FAST = google_crc32c.implementation == "c"
except ImportError:  # pragma: no cover - depends on the wheel being installable
    _extend = _py_extend
    FAST = False


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The standard CRC-32C (initial and final inversion), continuing from `crc`."""
    return _extend(crc, bytes(data))


def crc32c_raw(seed: int, data: bytes | bytearray | memoryview) -> int:
    """Linux's `crc32c(seed, data)`: no inversions (what ext4 checksums are built on)."""
    return (~_extend(~seed & MASK, bytes(data))) & MASK
