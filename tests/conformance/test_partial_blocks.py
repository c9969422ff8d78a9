"""An incremental whose extents cover only parts of 1 MiB blocks: the engine fills the rest
of each touched block from the previous point (read ahead on threads) and zeroes what the
source calls zero; every point must still equal the disk byte for byte."""

from __future__ import annotations

import random
from typing import Any

from openbdr.blocks import BLOCK_SIZE
from openbdr.capture.base import ChangeToken, DiskSnapshot, Host, Snapshot
from openbdr.extents import Extent, normalize

from .sources import check_source

BLOCKS = 40


class _Disk(DiskSnapshot):
    def __init__(self, data: bytes, extents: list[Extent], zeros: list[Extent],
                 incremental: bool, gen: int) -> None:
        self.name, self.size = "d0", len(data)
        self.data = data
        self.incremental = incremental
        self._extents, self._zeros, self.gen = extents, zeros, gen
        self.reads: list[tuple[int, int]] = []

    def extents(self) -> list[Extent]:
        return self._extents

    def zero_extents(self) -> list[Extent]:
        return self._zeros

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        n = max(0, min(len(buf), self.size - offset))
        memoryview(buf)[:n] = self.data[offset:offset + n]
        self.reads.append((offset, n))
        return n

    @property
    def token(self) -> ChangeToken:
        return ChangeToken("partial", {"gen": self.gen})


class _Snap(Snapshot):
    def __init__(self, disk: _Disk) -> None:
        self.disks = [disk]
        self.consistency = "crash"


class PartialHost(Host):
    """One disk; each change writes and zeroes scattered byte ranges, listed exactly."""

    def __init__(self, seed: int) -> None:
        self.name = "partial1"
        self.rng = random.Random(seed)
        self.disk = bytearray(self.rng.randbytes(BLOCKS * BLOCK_SIZE - 5000))
        self.written: list[Extent] = []
        self.zeroed: list[Extent] = []
        self.gen = 0
        self.last: _Disk | None = None

    def describe(self) -> str:
        return "partial:test"

    def change(self, round_: int) -> None:
        self.written, self.zeroed = [], []
        for _ in range(60):
            off = self.rng.randrange(0, len(self.disk) - 1)
            n = min(self.rng.choice([512, 4096, 70_000, 300_000]), len(self.disk) - off)
            self.disk[off:off + n] = self.rng.randbytes(n)
            self.written.append(Extent(off, n))
        for _ in range(8):
            off = self.rng.randrange(0, len(self.disk) - 1)
            n = min(self.rng.choice([4096, 200_000]), len(self.disk) - off)
            self.disk[off:off + n] = bytes(n)
            self.zeroed.append(Extent(off, n))
        self.gen += 1

    def snapshot(self, since: ChangeToken | None) -> Snapshot:
        data = bytes(self.disk)
        if since is None:
            disk = _Disk(data, [Extent(0, len(data))], [], False, self.gen)
        else:
            zeros = normalize(self.zeroed)
            from openbdr.extents import subtract

            listed = subtract(normalize(self.written), zeros)
            disk = _Disk(data, listed, zeros, True, self.gen)
        self.last = disk
        return _Snap(disk)


def test_partial_block_incrementals_equal_the_disk() -> None:
    host = PartialHost(7)
    rounds: list[Any] = check_source(host, host.change, rounds=4)
    assert len(rounds) == 4
    assert host.last is not None and host.last.incremental
    # only the listed bytes were read from the source, never whole blocks around them
    assert sum(n for _, n in host.last.reads) < BLOCKS * BLOCK_SIZE // 2
    assert any(n < BLOCK_SIZE and n % 4096 for _, n in host.last.reads)
