"""dattobd / elastio-snap COW files crafted in the drivers' documented layout."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from openbdr.capture.linux.dattobd import (
    FLAG_CLEAN,
    FLAG_INDEX_ONLY,
    HEADER_SIZE,
    MAGIC,
    changed_extents,
    read_header,
)
from openbdr.errors import SourceError
from openbdr.extents import Extent

DEV = 64 * (1 << 20) + 4096 * 3  # a size that does not end on a 1 MiB boundary


def _cow(path: Path, changed: list[int], nblocks: int, magic: int = MAGIC) -> uuid.UUID:
    series = uuid.uuid4()
    head = struct.pack(
        "<IIQQQ16sQQ", magic, FLAG_CLEAN | FLAG_INDEX_ONLY, 0, 0, 7, series.bytes, 1, len(changed)
    )
    index = bytearray(nblocks * 8)
    for b in changed:
        struct.pack_into("<Q", index, b * 8, 1)  # incremental mode: a filler mapping
    path.write_bytes(head.ljust(HEADER_SIZE, b"\0") + bytes(index))
    return series


def test_index_lists_changed_blocks(tmp_path: Path) -> None:
    nblocks = -(-DEV // 4096)
    series = _cow(tmp_path / "cow", [0, 1, 2, 700, 5000, nblocks - 1], nblocks)
    h = read_header(tmp_path / "cow")
    assert (h.seqid, h.uuid, h.nr_changed_blocks) == (7, str(series), 6)
    assert h.clean and h.incremental
    assert changed_extents(tmp_path / "cow", DEV) == [
        Extent(0, 3 * 4096),
        Extent(700 * 4096, 4096),
        Extent(5000 * 4096, 4096),
        Extent((nblocks - 1) * 4096, 4096),
    ]


def test_foreign_or_short_files_are_refused(tmp_path: Path) -> None:
    _cow(tmp_path / "bad", [1], 16, magic=1234)
    with pytest.raises(SourceError, match="not a dattobd"):
        read_header(tmp_path / "bad")
    _cow(tmp_path / "short", [1], 16)
    with pytest.raises(SourceError, match="another device"):
        changed_extents(tmp_path / "short", DEV)
