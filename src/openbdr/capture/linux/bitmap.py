"""Dirty bitmaps of 1 MiB blocks and their persisted tracking state.

One bit per block of the whole disk. The state file carries what makes a bitmap
trustworthy later: the boot it was recorded in, the tracking session (a new one whenever
continuity is lost), the generation (one per final cut of a sync: a restore point's token
names the generation whose changes come after it) and whether the agent stopped cleanly.
A reboot, an unclean stop or a missing or damaged file all start a new session, which
forces a hash-compare resync instead of trusting a gap.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...blocks import BLOCK_SIZE, block_count
from ...extents import Extent, from_blocks

MAGIC = b"OBDRBMP1"
#: how many generations of history a state keeps (older tokens fall back to hash-compare)
KEEP_GENERATIONS = 16


class DirtyBitmap:
    """A set of 1 MiB blocks of a disk of `size` bytes."""

    def __init__(self, size: int, data: bytes | bytearray | None = None) -> None:
        self.size = size
        self.n = block_count(size)
        nbytes = (self.n + 7) // 8
        self.bits = bytearray(data) if data is not None else bytearray(nbytes)
        if len(self.bits) != nbytes:
            raise ValueError(f"bitmap of {len(self.bits)} bytes for {self.n} blocks")

    def mark(self, offset: int, length: int) -> None:
        """Mark the blocks that byte range `[offset, offset+length)` touches."""
        if length <= 0:
            return
        first = max(0, offset) // BLOCK_SIZE
        last = min(self.n - 1, (offset + length - 1) // BLOCK_SIZE)
        bits = self.bits
        for b in range(first, last + 1):
            bits[b >> 3] |= 1 << (b & 7)

    def add(self, b: int) -> None:
        self.bits[b >> 3] |= 1 << (b & 7)

    def add_all(self, blocks: Iterable[int]) -> None:
        """Add blocks; those past the end of the disk are ignored."""
        bits, n = self.bits, self.n
        for b in blocks:
            if b < n:
                bits[b >> 3] |= 1 << (b & 7)

    def __contains__(self, b: int) -> bool:
        return 0 <= b < self.n and bool(self.bits[b >> 3] & (1 << (b & 7)))

    def __ior__(self, other: DirtyBitmap) -> DirtyBitmap:
        a = int.from_bytes(self.bits, "little") | int.from_bytes(other.bits, "little")
        self.bits = bytearray(a.to_bytes(len(self.bits), "little"))
        return self

    def copy(self) -> DirtyBitmap:
        return DirtyBitmap(self.size, self.bits)

    def blocks(self) -> list[int]:
        out: list[int] = []
        for i, byte in enumerate(self.bits):
            if byte:
                out.extend(i * 8 + k for k in range(8) if byte & (1 << k))
        return [b for b in out if b < self.n]

    def count(self) -> int:
        return sum(bin(x).count("1") for x in self.bits)

    def extents(self) -> list[Extent]:
        return from_blocks(self.blocks(), self.size)

    def __bool__(self) -> bool:
        return any(self.bits)


@dataclass
class TrackState:
    """What the tracker persists between agent runs."""

    size: int
    device: str
    boot_id: str
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    gen: int = 0
    #: tokens of generations below this are not trusted (events were lost)
    valid_from: int = 0
    clean: bool = False
    #: the instance's lost-event count when the state was saved
    lost_seen: int = 0
    #: changes during each earlier generation (gen -> bitmap)
    history: dict[int, DirtyBitmap] = field(default_factory=dict)
    #: changes since the start of the current generation
    current: DirtyBitmap | None = None

    def __post_init__(self) -> None:
        if self.current is None:
            self.current = DirtyBitmap(self.size)

    def header(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "device": self.device,
            "boot_id": self.boot_id,
            "session": self.session,
            "gen": self.gen,
            "valid_from": self.valid_from,
            "clean": self.clean,
            "lost_seen": self.lost_seen,
            "history": sorted(self.history),
        }

    def advance(self) -> int:
        """Close the current generation; return the new generation number."""
        assert self.current is not None
        self.history[self.gen] = self.current
        self.current = DirtyBitmap(self.size)
        self.gen += 1
        for g in [g for g in self.history if g < self.gen - KEEP_GENERATIONS]:
            del self.history[g]
        return self.gen

    def changes_since(self, gen: int) -> DirtyBitmap | None:
        """Blocks changed since generation `gen` started; None if that is not known."""
        assert self.current is not None
        if gen < self.valid_from or gen > self.gen:
            return None
        if any(g not in self.history for g in range(gen, self.gen)):
            return None
        out = self.current.copy()
        for g in range(gen, self.gen):
            out |= self.history[g]
        return out

    def save(self, path: Path) -> None:
        """Atomically replace the state file (write, fsync, rename)."""
        assert self.current is not None
        head = json.dumps(self.header()).encode()
        body = b"".join(bytes(self.history[g].bits) for g in sorted(self.history))
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(
                fd, MAGIC + struct.pack("<I", len(head)) + head + body + bytes(self.current.bits)
            )
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TrackState | None:
        """The saved state, or None if there is none or it is unreadable."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if data[:8] != MAGIC or len(data) < 12:
            return None
        (hl,) = struct.unpack_from("<I", data, 8)
        try:
            h = json.loads(data[12 : 12 + hl])
            size = int(h["size"])
            nbytes = (block_count(size) + 7) // 8
            pos = 12 + hl
            hist = {}
            for g in h["history"]:
                hist[int(g)] = DirtyBitmap(size, data[pos : pos + nbytes])
                pos += nbytes
            current = DirtyBitmap(size, data[pos : pos + nbytes])
            return cls(
                size=size,
                device=str(h["device"]),
                boot_id=str(h["boot_id"]),
                session=str(h["session"]),
                gen=int(h["gen"]),
                valid_from=int(h["valid_from"]),
                clean=bool(h["clean"]),
                lost_seen=int(h["lost_seen"]),
                history=hist,
                current=current,
            )
        except (ValueError, KeyError, TypeError):
            return None
