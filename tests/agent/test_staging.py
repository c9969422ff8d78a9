"""The staging store: blocks and pages read from the device land at their offsets, in
memory (read straight into the map, lent without a copy) as in a file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openbdr.capture.linux.direct import DirectReader
from openbdr.capture.linux.staging import Staging

MiB = 1 << 20
PAGE = 4096
SIZE = 5 * MiB + 3 * PAGE  # the last block is short


@pytest.mark.parametrize("memory", [64 * MiB, 0], ids=["memory", "file"])
def test_staged_blocks_and_pages_are_the_device_at_their_copy(tmp_path: Path, memory: int) -> None:
    dev = tmp_path / "dev.img"
    data = bytearray(os.urandom(SIZE))
    dev.write_bytes(data)
    reader = DirectReader(str(dev), SIZE)
    staging = Staging(tmp_path / "d.staging", SIZE, memory)
    try:
        staging.copy(reader, [0, 2, 5])
        # the device changes after the copy: pages 3-4 of block 2, page 0 of block 5 and
        # all of block 0; only the pages named are copied again
        data[2 * MiB + 3 * PAGE : 2 * MiB + 5 * PAGE] = os.urandom(2 * PAGE)
        data[5 * MiB : 5 * MiB + PAGE] = os.urandom(PAGE)
        stale = bytes(data[:MiB])
        data[:MiB] = os.urandom(MiB)
        with open(dev, "r+b") as f:
            f.write(data)
        staging.copy(reader, [2, 5], {2: 0b11000, 5: 0b1})

        assert [b for b in range(6) if b in staging] == [0, 2, 5]
        assert staging.bytes_copied == reader.bytes_read == 2 * MiB + 3 * PAGE + 3 * PAGE
        for b, want in ((0, stale), (2, data[2 * MiB : 3 * MiB]), (5, data[5 * MiB :])):
            got = bytearray(len(want))
            assert staging.read_into(b * MiB, memoryview(got)) == len(want)
            assert got == want, f"block {b}"
            view = staging.view(b * MiB, len(want))
            if memory:
                assert view is not None and view.readonly and view == want
            else:
                assert view is None
            del view
    finally:
        staging.close()
        reader.close()
    assert not (tmp_path / "d.staging").exists()
