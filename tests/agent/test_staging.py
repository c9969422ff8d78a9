"""The staging store: blocks and pages read from the device are the device at their copy,
in memory (read straight into the block's slot, lent without a copy) as in a file; the
memory is kept for the next capture, then given back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from openbdr.capture.linux.direct import DirectReader
from openbdr.capture.linux.staging import Staging, StagingMemory

MiB = 1 << 20
PAGE = 4096
SIZE = 5 * MiB + 3 * PAGE  # the last block is short


def _device(tmp_path: Path) -> tuple[Path, bytearray, DirectReader]:
    dev = tmp_path / "dev.img"
    data = bytearray(os.urandom(SIZE))
    dev.write_bytes(data)
    return dev, data, DirectReader(str(dev), SIZE)


def _assert_staged(staging: Staging, data: bytes | bytearray, blocks: list[int]) -> None:
    for b in blocks:
        want = data[b * MiB : (b + 1) * MiB]
        got = bytearray(len(want))
        assert staging.read_into(b * MiB, memoryview(got)) == len(want)
        assert got == want, f"block {b}"
        view = staging.view(b * MiB, len(want))
        assert (view == want) if staging.in_memory else view is None, f"block {b}"
        del view


@pytest.mark.parametrize("memory", [64 * MiB, 0], ids=["memory", "file"])
def test_staged_blocks_and_pages_are_the_device_at_their_copy(tmp_path: Path, memory: int) -> None:
    dev, data, reader = _device(tmp_path)
    staging = Staging(tmp_path / "d.staging", SIZE, memory)
    try:
        staging.copy(reader, [0, 2, 5])
        # the device changes after the copy: pages 3-4 of block 2, page 0 of block 5 and
        # all of block 0; only the pages named are copied again
        data[2 * MiB + 3 * PAGE : 2 * MiB + 5 * PAGE] = os.urandom(2 * PAGE)
        data[5 * MiB : 5 * MiB + PAGE] = os.urandom(PAGE)
        stale = bytes(data[:MiB])
        data[:MiB] = os.urandom(MiB)
        dev.write_bytes(data)
        staging.copy(reader, [2, 5], {2: 0b11000, 5: 0b1})

        assert [b for b in range(6) if b in staging] == [0, 2, 5]
        assert staging.in_memory == bool(memory)
        assert staging.bytes_copied == reader.bytes_read == 2 * MiB + 3 * PAGE + 3 * PAGE
        _assert_staged(staging, stale + data[MiB:], [0, 2, 5])
        view = staging.view(2 * MiB, MiB)
        assert view is None or view.readonly
    finally:
        staging.close()
        reader.close()
    assert not (tmp_path / "d.staging").exists()


def test_staging_memory_is_kept_for_the_next_capture_then_given_back(tmp_path: Path) -> None:
    dev, data, reader = _device(tmp_path)
    memory = StagingMemory(4 * MiB, keep=0.3)
    try:
        assert memory.acquire() and not memory.acquire()  # one capture at a time
        first = Staging(tmp_path / "a.staging", SIZE, memory)
        first.copy(reader, [0, 2])
        _assert_staged(first, data, [0, 2])
        first.close()
        assert memory.map is not None  # kept
        assert memory.acquire()
        # the next capture takes the same slots for other blocks: only its own copies show
        data[5 * MiB :] = os.urandom(SIZE - 5 * MiB)
        dev.write_bytes(data)
        second = Staging(tmp_path / "b.staging", SIZE, memory)
        second.copy(reader, [5, 1])
        assert [b for b in range(6) if b in second] == [1, 5]
        _assert_staged(second, data, [1, 5])
        assert second.view(0, MiB) is None
        with pytest.raises(ValueError):
            second.read_into(0, memoryview(bytearray(MiB)))
        second.close()
        time.sleep(1.0)
        assert memory.map is None and not memory.acquire()  # given back after `keep`
    finally:
        memory.close()
        reader.close()


def test_staged_blocks_move_to_the_file_past_the_memory_budget(tmp_path: Path) -> None:
    dev, data, reader = _device(tmp_path)
    memory = StagingMemory(2 * MiB)
    assert memory.acquire()
    staging = Staging(tmp_path / "c.staging", SIZE, memory)
    try:
        staging.copy(reader, [0, 2])
        assert staging.in_memory and not (tmp_path / "c.staging").exists()
        data[2 * MiB : 2 * MiB + PAGE] = os.urandom(PAGE)
        dev.write_bytes(data)
        staging.copy(reader, [5, 2], {2: 0b1})  # a third block: past the budget
        assert not staging.in_memory and (tmp_path / "c.staging").exists()
        assert memory.map is None  # no `keep`: given back at once
        _assert_staged(staging, data, [0, 2, 5])
    finally:
        staging.close()
        reader.close()
    assert not (tmp_path / "c.staging").exists()
