"""The block store behind a copy-on-write volume: 1 MiB slots in a pool file, a block map.

A volume of `size` bytes is a map from its 1 MiB blocks to slots of a sparse `data` file.
A snapshot is a copy of the map (milliseconds, whatever the volume size); from then on a
write to a block whose slot the snapshot still maps goes to a fresh slot (the old block is
copied first when the write is partial), so the snapshot's slots never change until it is
released, and releasing it frees the slots only it used. Every write marks its blocks in
the current generation's dirty bitmap: the changed-block list of the next incremental is
exact, with no tracing. An unclean stop starts a new tracking session (the next sync is a
hash-compare resync), as the tracefs tracker does.

Durability: `flush()` (the kernel's fsync of the volume) syncs the data file first, then
writes the changed map entries and syncs the map, so the map on disk never points at data
that is not there; slots freed meanwhile are reused only after that.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...blocks import BLOCK_SIZE, block_count
from ...errors import SourceError
from .bitmap import DirtyBitmap, TrackState

UNMAPPED = 0xFFFFFFFF
FORMAT = 1
_ZERO = bytes(BLOCK_SIZE)


class VolumeError(SourceError):
    """A copy-on-write volume is missing, damaged or used wrongly."""


@dataclass
class Frozen:
    """A held snapshot: its map, generation and the changes it was asked for."""

    id: str
    gen: int
    map: array[int]


class CowStore:
    """One volume directory: `meta.json`, `map`, `data`, `track` (tracking state)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            meta = json.loads((self.root / "meta.json").read_text())
        except (FileNotFoundError, ValueError) as exc:
            raise VolumeError(
                f"{self.root} is not a copy-on-write volume ({exc})",
                "create one: openbdr agent volume create DIR --size SIZE",
            ) from None
        if meta.get("format") != FORMAT or meta.get("block_size") != BLOCK_SIZE:
            raise VolumeError(f"{self.root}: unknown volume format {meta}")
        self.id = str(meta["id"])
        self.size = int(meta["size"])
        self.n = block_count(self.size)
        self.lock = threading.Lock()
        self.map = array("I")
        with open(self.root / "map", "rb") as f:
            self.map.frombytes(f.read())
        if len(self.map) != self.n:
            raise VolumeError(f"{self.root}/map has {len(self.map)} entries, not {self.n}")
        used = {s for s in self.map if s != UNMAPPED}
        self.high = max(used) + 1 if used else 0
        self.free = sorted(set(range(self.high)) - used, reverse=True)
        self.pending: list[int] = []
        self.map_dirty: set[int] = set()
        self.snaps: dict[str, Frozen] = {}
        self.data_fd = os.open(self.root / "data", os.O_RDWR | os.O_CLOEXEC)
        self.map_fd = os.open(self.root / "map", os.O_RDWR | os.O_CLOEXEC)
        st = TrackState.load(self.root / "track")
        self.start_reason: str | None = None
        if st is None or not st.clean or st.size != self.size:
            self.start_reason = "no saved state" if st is None else "the volume did not stop cleanly"
            st = TrackState(size=self.size, device=self.id, boot_id="")
        self.track = st
        self.track.clean = False
        self.track.save(self.root / "track")

    @classmethod
    def create(cls, root: Path, size: int) -> CowStore:
        root = Path(root)
        if size <= 0 or size % 512:
            raise VolumeError(f"volume size {size} must be a positive multiple of 512 bytes")
        if (root / "meta.json").exists():
            raise VolumeError(f"{root} already holds a volume", "pick another directory")
        root.mkdir(parents=True, exist_ok=True)
        n = block_count(size)
        (root / "map").write_bytes(array("I", [UNMAPPED]).tobytes() * n)
        (root / "data").touch()
        meta = {"format": FORMAT, "id": uuid.uuid4().hex, "size": size, "block_size": BLOCK_SIZE}
        (root / "meta.json").write_text(json.dumps(meta))
        return cls(root)

    # -- slots ------------------------------------------------------------------------
    def _alloc(self) -> tuple[int, bool]:
        """A free slot and whether it is virgin (never written: reads as zeros)."""
        if self.free:
            return self.free.pop(), False
        self.high += 1
        return self.high - 1, True

    def _shared(self, b: int, slot: int) -> bool:
        return any(f.map[b] == slot for f in self.snaps.values())

    # -- the live volume --------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        with self.lock:
            return self._read_map(self.map, offset, size)

    def _read_map(self, m: array[int], offset: int, size: int) -> bytes:
        out = bytearray()
        end = offset + size
        pos = offset
        while pos < end:
            b, within = divmod(pos, BLOCK_SIZE)
            n = min(end - pos, BLOCK_SIZE - within)
            slot = m[b]
            if slot == UNMAPPED:
                out += _ZERO[:n]
            else:
                got = os.pread(self.data_fd, n, slot * BLOCK_SIZE + within)
                out += got.ljust(n, b"\0")  # a virgin slot's tail is a hole past EOF
            pos += n
        return bytes(out)

    def write(self, offset: int, data: bytes) -> int:
        if offset < 0 or offset + len(data) > self.size:
            raise VolumeError(f"write at {offset}+{len(data)} beyond the volume's {self.size} bytes")
        view = memoryview(data)
        pos = 0
        with self.lock:
            while pos < len(view):
                b, within = divmod(offset + pos, BLOCK_SIZE)
                n = min(len(view) - pos, BLOCK_SIZE - within)
                self._write_block(b, within, view[pos : pos + n])
                self.track.current.add(b)  # type: ignore[union-attr]
                pos += n
        return len(data)

    def _write_block(self, b: int, within: int, part: memoryview) -> None:
        slot = self.map[b]
        if slot != UNMAPPED and not self._shared(b, slot):
            os.pwrite(self.data_fd, part, slot * BLOCK_SIZE + within)
            return
        new, virgin = self._alloc()
        whole = len(part) == BLOCK_SIZE
        if whole:
            os.pwrite(self.data_fd, part, new * BLOCK_SIZE)
        elif slot != UNMAPPED or not virgin:
            # copy-on-write of the old block (or zeros), with the new bytes over it
            old = bytearray(
                _ZERO if slot == UNMAPPED else self._read_map(self.map, b * BLOCK_SIZE, BLOCK_SIZE)
            )
            old[within : within + len(part)] = part
            os.pwrite(self.data_fd, old, new * BLOCK_SIZE)
        else:
            os.pwrite(self.data_fd, part, new * BLOCK_SIZE + within)
        self.map[b] = new
        self.map_dirty.add(b)

    def discard(self, offset: int, length: int) -> None:
        """Punch: whole blocks are unmapped (their slots freed), partial ones zeroed."""
        end = min(self.size, offset + length)
        pos = max(0, offset)
        while pos < end:
            b, within = divmod(pos, BLOCK_SIZE)
            n = min(end - pos, BLOCK_SIZE - within)
            if n == BLOCK_SIZE or (within == 0 and pos + n == self.size):
                with self.lock:
                    slot = self.map[b]
                    if slot != UNMAPPED:
                        self.map[b] = UNMAPPED
                        self.map_dirty.add(b)
                        if not self._shared(b, slot):
                            self.pending.append(slot)
                        self.track.current.add(b)  # type: ignore[union-attr]
            elif self.map[b] != UNMAPPED:
                self.write(pos, _ZERO[:n])
            pos += n

    def flush(self) -> None:
        """Make every completed write durable: data first, then the map that points at it."""
        with self.lock:
            os.fdatasync(self.data_fd)
            for b in sorted(self.map_dirty):
                os.pwrite(self.map_fd, self.map[b].to_bytes(4, "little"), b * 4)
            self.map_dirty.clear()
            os.fdatasync(self.map_fd)
            self.free.extend(self.pending)
            self.pending.clear()

    # -- snapshots --------------------------------------------------------------------
    def snapshot(
        self, since: dict[str, Any] | None = None
    ) -> tuple[Frozen, DirtyBitmap | None, str | None]:
        """Freeze the map now. With `since` ({session, gen}) also return the blocks written
        since that token's snapshot, or None and why they are not known."""
        with self.lock:
            changed: DirtyBitmap | None = None
            why: str | None = None
            if since is not None:
                if since.get("session") != self.track.session:
                    why = self.start_reason or "another tracking session"
                else:
                    changed = self.track.changes_since(int(since.get("gen", -1)))
                    if changed is None:
                        why = "the generation is no longer known"
            gen = self.track.advance()
            f = Frozen(uuid.uuid4().hex, gen, array("I", self.map))
            self.snaps[f.id] = f
        return f, changed, why

    def read_frozen(self, f: Frozen, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        # no lock: a held snapshot's slots are never written nor reused
        return self._read_map(f.map, offset, size)

    def release(self, snap_id: str) -> None:
        with self.lock:
            f = self.snaps.pop(snap_id, None)
            if f is None:
                return
            for b, slot in enumerate(f.map):
                if slot != UNMAPPED and slot != self.map[b] and not self._shared(b, slot):
                    self.pending.append(slot)

    def close(self) -> None:
        """Clean stop: everything durable, tracking state saved as clean."""
        for sid in list(self.snaps):
            self.release(sid)
        self.flush()
        with self.lock:
            self.track.clean = True
            self.track.save(self.root / "track")
            os.close(self.data_fd)
            os.close(self.map_fd)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "id": self.id,
                "size": self.size,
                "session": self.track.session,
                "gen": self.track.gen,
                "slots": self.high,
                "free_slots": len(self.free) + len(self.pending),
                "snapshots": len(self.snaps),
                "dirty_blocks": self.track.current.count(),  # type: ignore[union-attr]
                "started_new_session": self.start_reason,
            }
