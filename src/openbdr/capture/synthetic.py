"""Source `synthetic`: generated disks that change by a known rule, for load tests.

It needs no device and no platform, so a control plane can be loaded with thousands of
hosts (`benchmarks/bench_control.py`), and every part of the source contract is
exercised with bytes a test can predict: generation `g` rewrites block `g mod N` whole,
discards block `g+1` (reported by `zero_extents`, never read) and rewrites the first half
of block `g+3` (a change finer than a block, as EBS or RBD report them).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..blocks import BLOCK_SIZE
from ..errors import SourceError
from ..extents import Extent, normalize
from .base import ChangeToken, DiskSnapshot, Host, Snapshot
from .registry import SourceType, register_source

HALF = BLOCK_SIZE // 2


def _events(k: int, n: int) -> list[tuple[int, int, str]]:
    """(block, half or -1 for both, "write"|"zero") that generation k applies."""
    out = [(k % n, -1, "write")]
    if n >= 2:
        out.append(((k + 1) % n, -1, "zero"))
    if n >= 4:  # a block written whole two generations ago: its other half is data
        out.append(((k + 3) % n, 0, "write"))
    return out


class SynthDisk(DiskSnapshot):
    def __init__(self, host: str, name: str, blocks: int, gen: int, since: int | None) -> None:
        self.host = host
        self.name = name
        self.blocks = blocks
        self.size = blocks * BLOCK_SIZE
        self.gen = gen
        self.since = since
        self.incremental = since is not None

    def _state(self, block: int, half: int) -> int | None:
        """The generation whose bytes the half-block holds (None: zero)."""
        for k in range(self.gen, max(0, self.gen - self.blocks - 2), -1):
            for b, h, what in _events(k, self.blocks):
                if b == block and h in (-1, half):
                    return k if what == "write" else None
        return 0

    def _fill(self, block: int, half: int, out: memoryview) -> None:
        k = self._state(block, half)
        if k is None:
            out[:] = bytes(len(out))
            return
        seed = hashlib.blake2b(f"{self.host}/{self.name}/{block}/{half}/{k}".encode()).digest()
        out[:] = (seed * (HALF // len(seed)))[: len(out)]

    def extents(self) -> list[Extent]:
        if self.since is None:
            return normalize(
                Extent(b * BLOCK_SIZE + h * HALF, HALF)
                for b in range(self.blocks)
                for h in (0, 1)
                if self._state(b, h) is not None
            )
        out = []
        for k in range(self.since + 1, self.gen + 1):
            for b, h, what in _events(k, self.blocks):
                if what == "write":
                    out.append(Extent(b * BLOCK_SIZE + max(h, 0) * HALF, HALF if h >= 0 else BLOCK_SIZE))
        return normalize(e for e in out if not self._zeroed(e))

    def _zeroed(self, e: Extent) -> bool:
        return self._state(e.offset // BLOCK_SIZE, (e.offset % BLOCK_SIZE) // HALF) is None

    def zero_extents(self) -> list[Extent]:
        if self.since is None:
            return []
        out = [
            Extent(b * BLOCK_SIZE, BLOCK_SIZE)
            for k in range(self.since + 1, self.gen + 1)
            for b, _h, what in _events(k, self.blocks)
            if what == "zero"
        ]
        return normalize(e for e in out if self._zeroed(e))

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self.size - offset))
        pos = 0
        while pos < n:
            at = offset + pos
            block, half = at // BLOCK_SIZE, (at % BLOCK_SIZE) // HALF
            start = block * BLOCK_SIZE + half * HALF
            piece = bytearray(HALF)
            self._fill(block, half, memoryview(piece))
            take = min(n - pos, start + HALF - at)
            view[pos : pos + take] = piece[at - start : at - start + take]
            pos += take
        return n

    @property
    def token(self) -> ChangeToken:
        return ChangeToken("synthetic", {"gen": self.gen})

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "gen": self.gen}


class SynthSnapshot(Snapshot):
    def __init__(self, disks: list[DiskSnapshot]) -> None:
        self.disks = disks
        self.consistency = "crash"


class SynthHost(Host):
    """`disks` disks of `blocks` MiB each."""

    def __init__(self, name: str, blocks: int = 2, disks: int = 1) -> None:
        self.name = name
        self.blocks = blocks
        self.ndisks = disks

    def snapshot(self, since: ChangeToken | None) -> SynthSnapshot:
        prev = None
        if since is not None:
            first = (since.value.get("disk0") or {}).get("value") or {}
            prev = int(first.get("gen", 0))
        gen = (prev or 0) + 1
        return SynthSnapshot(
            [SynthDisk(self.name, f"disk{i}", self.blocks, gen, prev) for i in range(self.ndisks)]
        )

    def describe(self) -> str:
        return f"synthetic:{self.ndisks}x{self.blocks}MiB"


def _validate(spec: dict[str, Any]) -> None:
    for key in ("blocks", "disks"):
        value = spec.get(key, 1)
        if not isinstance(value, int) or not 1 <= value <= 1 << 20:
            raise SourceError(
                f"source type synthetic: {key} must be a whole number from 1 to 1048576",
                'e.g. {"type": "synthetic", "blocks": 64, "disks": 2}',
            )


def _open(name: str, spec: dict[str, Any]) -> SynthHost:
    _validate(spec)
    return SynthHost(name, int(spec.get("blocks", 2)), int(spec.get("disks", 1)))


def _parse(arg: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "synthetic"}
    for part in filter(None, arg.split(",")):
        key, _, value = part.partition("=")
        spec[key] = int(value) if value.isdigit() else value
    return spec


register_source(
    SourceType(
        "synthetic",
        _open,
        _validate,
        "generated disks that change by a known rule (load tests; no real data)",
        {"blocks": "MiB per disk", "disks": "number of disks"},
        parse=_parse,
    )
)
