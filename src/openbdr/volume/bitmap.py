"""Allocation bitmaps to runs, without a Python loop per bit.

ext4 block bitmaps and the NTFS $Bitmap are little-endian bit arrays (bit i lives in byte
i // 8 at position i % 8). A 1 TiB ext4 has 256 Mi bits, so the scan lets the regex engine
skip 0x00 bytes and swallow 0xff runs in C; only bytes with both free and used bits reach
Python, through a 256-entry table.
"""

from __future__ import annotations

import re

from ..extents import Extent

_INTERESTING = re.compile(rb"\xff+|[^\x00\xff]", re.DOTALL)


def _byte_runs(value: int) -> tuple[tuple[int, int], ...]:
    runs: list[tuple[int, int]] = []
    bit = 0
    while bit < 8:
        if value >> bit & 1:
            start = bit
            while bit < 8 and value >> bit & 1:
                bit += 1
            runs.append((start, bit - start))
        else:
            bit += 1
    return tuple(runs)


_BYTE_RUNS = tuple(_byte_runs(v) for v in range(256))


def set_runs(
    data: bytes | bytearray | memoryview, nbits: int | None = None
) -> list[tuple[int, int]]:
    """`(first_bit, count)` runs of 1 bits, merged, limited to the first `nbits` bits."""
    buf = bytes(data)
    limit = len(buf) * 8 if nbits is None else max(0, min(nbits, len(buf) * 8))
    out: list[tuple[int, int]] = []
    start = end = -1
    for m in _INTERESTING.finditer(buf, 0, (limit + 7) // 8):
        s, e = m.span()
        if buf[s] == 0xFF:
            pieces: tuple[tuple[int, int], ...] = ((s * 8, (e - s) * 8),)
        else:
            base = s * 8
            pieces = tuple((base + a, n) for a, n in _BYTE_RUNS[buf[s]])
        for a, n in pieces:
            if a == end:
                end = a + n
            else:
                if end > start >= 0:
                    out.append((start, end - start))
                start, end = a, a + n
    if end > start >= 0:
        out.append((start, end - start))
    while out and out[-1][0] + out[-1][1] > limit:
        a, n = out.pop()
        if a < limit:
            out.append((a, limit - a))
            break
    return out


def runs_to_extents(
    runs: list[tuple[int, int]], unit: int, base: int = 0, first_unit: int = 0
) -> list[Extent]:
    """Turn bit runs into byte extents: bit i is unit `first_unit + i`, at `base + unit * that`."""
    return [Extent(base + (first_unit + a) * unit, n * unit) for a, n in runs]
