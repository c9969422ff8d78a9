"""Extent lists: sorted, merged `(offset, length)` byte ranges.

Every source, the volume parsers and the sync pipeline speak in extents; they are
mapped onto 1 MiB blocks only at the sync boundary (`to_blocks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from .blocks import BLOCK_SIZE


class Extent(NamedTuple):
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def normalize(extents: Iterable[tuple[int, int]]) -> list[Extent]:
    """Sort, drop empty ranges and merge overlapping or touching ones."""
    out: list[Extent] = []
    for off, length in sorted((int(o), int(n)) for o, n in extents if n > 0):
        if off < 0:
            length += off
            off = 0
            if length <= 0:
                continue
        if out and off <= out[-1].end:
            last = out[-1]
            out[-1] = Extent(last.offset, max(last.end, off + length) - last.offset)
        else:
            out.append(Extent(off, length))
    return out


def clip(extents: Iterable[tuple[int, int]], size: int) -> list[Extent]:
    """Restrict extents to `[0, size)`."""
    return intersect(extents, [Extent(0, size)])


def intersect(a: Iterable[tuple[int, int]], b: Iterable[tuple[int, int]]) -> list[Extent]:
    """Bytes present in both lists."""
    la, lb = normalize(a), normalize(b)
    out: list[Extent] = []
    i = j = 0
    while i < len(la) and j < len(lb):
        lo = max(la[i].offset, lb[j].offset)
        hi = min(la[i].end, lb[j].end)
        if lo < hi:
            out.append(Extent(lo, hi - lo))
        if la[i].end < lb[j].end:
            i += 1
        else:
            j += 1
    return out


def union(*lists: Iterable[tuple[int, int]]) -> list[Extent]:
    return normalize(e for lst in lists for e in lst)


def subtract(a: Iterable[tuple[int, int]], b: Iterable[tuple[int, int]]) -> list[Extent]:
    """Bytes of `a` not in `b`."""
    out: list[Extent] = []
    lb = normalize(b)
    j = 0
    for ext in normalize(a):
        pos, end = ext.offset, ext.end
        while j < len(lb) and lb[j].end <= pos:
            j += 1
        k = j
        while k < len(lb) and lb[k].offset < end:
            if lb[k].offset > pos:
                out.append(Extent(pos, lb[k].offset - pos))
            pos = max(pos, lb[k].end)
            k += 1
        if pos < end:
            out.append(Extent(pos, end - pos))
    return out


def total(extents: Iterable[tuple[int, int]]) -> int:
    return sum(n for _, n in normalize(extents))


def to_blocks(
    extents: Iterable[tuple[int, int]], size: int, block_size: int = BLOCK_SIZE
) -> Iterator[int]:
    """Indexes of the blocks that the extents touch (any byte counts), in order, once each."""
    last = -1
    for ext in clip(extents, size):
        first = max(ext.offset // block_size, last + 1)
        stop = (ext.end + block_size - 1) // block_size
        yield from range(first, stop)
        last = max(last, stop - 1)


def from_blocks(blocks: Iterable[int], size: int, block_size: int = BLOCK_SIZE) -> list[Extent]:
    """Extents covering the given block indexes, clipped to the disk size."""
    return clip(((b * block_size, block_size) for b in blocks), size)
