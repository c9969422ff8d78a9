"""The fake's account: instances, EBS volumes backed by image files, snapshots that freeze
real bytes.

A volume is a raw image file (extended, sparse, to whole GiB: EBS sizes are GiB). The
caller writes into the file between snapshots, as a guest would write to the volume. A
snapshot freezes the volume when it is created: every allocated 512 KiB block of the file
(SEEK_DATA) is read and hashed; a block whose SHA-256 equals the one at the same index in
the volume's previous snapshot points at that snapshot's stored copy, any other is
appended to the snapshot's own pack file. So a snapshot costs one read of the volume and a
write of what changed (copy-on-write by content), and the SHA-256 is at hand for the
`x-amz-Checksum` header. "Present" blocks are those the file has allocated: a block
punched out (discard) is absent from later snapshots, as a never-written EBS block is.
An allocated block of zeros that the previous snapshot did not hold counts as never
written (SEEK_DATA reports unwritten extents as data once their pages are cached, so the
allocation alone would change between two looks at an unchanged file).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import itertools
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 512 * 1024
ZERO = bytes(BLOCK)
GIB = 1 << 30
OWNER = "123456789012"


@dataclass
class Loc:
    pack: Path
    offset: int
    sha: bytes  # raw SHA-256 of the 512 KiB block


@dataclass
class Volume:
    id: str
    path: Path
    size_gib: int
    az: str
    encrypted: bool = False
    kms_key_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    instance_id: str | None = None
    device: str | None = None
    created: float = field(default_factory=time.time)
    volume_type: str = "gp3"


@dataclass
class Instance:
    id: str
    state: str
    root_device: str
    az: str
    instance_type: str = "t3.medium"
    tags: dict[str, str] = field(default_factory=dict)
    #: device name -> volume id, in attachment order
    devices: dict[str, str] = field(default_factory=dict)
    launched: float = field(default_factory=time.time)


@dataclass
class Snap:
    id: str
    volume_id: str
    volume_size_gib: int
    started: float
    #: fake-clock instant at which `pending` turns `completed`
    complete_at: float
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    encrypted: bool = False
    kms_key_id: str | None = None
    blocks: dict[int, Loc] = field(default_factory=dict)
    pack: Path | None = None
    deleted: bool = False
    #: set once the frozen blocks are all known (at once, unless frozen in the background)
    ready: threading.Event = field(default_factory=threading.Event)


STATE_CODES = {"pending": 0, "running": 16, "stopping": 64, "stopped": 80, "terminated": 48}


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """Allocated (start, end) ranges of a sparse file."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end))
        pos = end
    return out


class Account:
    """Everything the fake region holds; one lock guards the maps (not block reads)."""

    def __init__(self, workdir: Path, region: str = "us-east-1") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.region = region
        self.az = region + "a"
        self.lock = threading.RLock()
        self.instances: dict[str, Instance] = {}
        self.volumes: dict[str, Volume] = {}
        self.snapshots: dict[str, Snap] = {}
        #: seconds a snapshot stays `pending` (fake clock)
        self.completion_delay = 0.2
        #: fake clock offset: tests move time forward instead of sleeping (token expiry)
        self.clock_offset = 0.0
        #: snapshots point into the backing files instead of copying blocks (benchmarks
        #: whose images never change in place: a new day is a new file, `set_backing`)
        self.immutable_backing = False
        self._seq = itertools.count(1)

    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        self.clock_offset += seconds

    # -- set-up (what the console or Terraform would have done) ---------------------
    def add_volume(
        self,
        path: str | os.PathLike[str],
        *,
        encrypted: bool = False,
        kms_key_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Volume:
        p = Path(path)
        size = p.stat().st_size
        gib = max(1, -(-size // GIB))
        if size != gib * GIB:
            os.truncate(p, gib * GIB)  # EBS volumes are whole GiB
        if encrypted and kms_key_id is None:
            kms_key_id = f"arn:aws:kms:{self.region}:{OWNER}:key/{secrets.token_hex(16)}"
        vol = Volume(_new_id("vol"), p, gib, self.az, encrypted, kms_key_id, dict(tags or {}))
        with self.lock:
            self.volumes[vol.id] = vol
        return vol

    def add_instance(
        self,
        volumes: list[Volume],
        *,
        name: str | None = None,
        state: str = "running",
        tags: dict[str, str] | None = None,
    ) -> Instance:
        """An instance whose first volume is the root (/dev/xvda), the rest /dev/xvdb…"""
        inst = Instance(_new_id("i"), state, "/dev/xvda", self.az, tags=dict(tags or {}))
        if name is not None:
            inst.tags["Name"] = name
        with self.lock:
            self.instances[inst.id] = inst
        for vol in volumes:
            self.attach(inst.id, vol.id)
        return inst

    def attach(self, instance_id: str, volume_id: str, device: str | None = None) -> None:
        with self.lock:
            inst = self.instances[instance_id]
            vol = self.volumes[volume_id]
            if device is None:
                device = "/dev/xvda" if not inst.devices else self._next_device(inst)
            inst.devices[device] = vol.id
            vol.instance_id, vol.device = inst.id, device

    def detach(self, volume_id: str) -> None:
        with self.lock:
            vol = self.volumes[volume_id]
            if vol.instance_id:
                self.instances[vol.instance_id].devices.pop(vol.device or "", None)
            vol.instance_id = vol.device = None

    @staticmethod
    def _next_device(inst: Instance) -> str:
        for c in "bcdefghijklmnopqrstuvwxyz":
            dev = f"/dev/xvd{c}"
            if dev not in inst.devices:
                return dev
        raise ValueError("no free device name")

    def set_backing(self, volume_id: str, path: str | os.PathLike[str]) -> None:
        """The volume's content is now that image (a benchmark's 'day of changes')."""
        with self.lock:
            vol = self.volumes[volume_id]
            vol.path = Path(path)

    # -- snapshots ----------------------------------------------------------------------
    def live_snapshots(self) -> list[Snap]:
        with self.lock:
            return [s for s in self.snapshots.values() if not s.deleted]

    def state_of(self, snap: Snap) -> str:
        done = snap.ready.is_set() and self.now() >= snap.complete_at
        return "completed" if done else "pending"

    def progress_of(self, snap: Snap) -> int:
        if self.state_of(snap) == "completed":
            return 100
        span = max(snap.complete_at - snap.started, 1e-9)
        return max(0, min(99, int(100 * (self.now() - snap.started) / span)))

    def _previous(self, volume_id: str) -> Snap | None:
        mine = [s for s in self.live_snapshots() if s.volume_id == volume_id]
        return max(mine, key=lambda s: s.started) if mine else None

    def snapshot_volume(self, vol: Volume, description: str, tags: dict[str, str]) -> Snap:
        """Freeze the volume now (the caller holds the instance's I/O still: one instant).
        An immutable backing is frozen in the background (the snapshot stays `pending`
        until then), as large EBS snapshots take time to complete."""
        now = self.now()
        snap_id = _new_id("snap")
        snap = Snap(
            snap_id,
            vol.id,
            vol.size_gib,
            started=now,
            complete_at=now + self.completion_delay,
            description=description,
            tags=dict(tags),
            encrypted=vol.encrypted,
            kms_key_id=vol.kms_key_id,
            pack=self.workdir / f"{snap_id}.pack",
        )
        prev = self._previous(vol.id)
        with self.lock:
            self.snapshots[snap.id] = snap
        if self.immutable_backing:
            threading.Thread(target=self._freeze, args=(snap, vol.path, prev), daemon=True).start()
        else:
            self._freeze(snap, vol.path, prev)
        return snap

    def _freeze(self, snap: Snap, path: Path, prev: Snap | None) -> None:
        assert snap.pack is not None
        blocks: dict[int, Loc] = {}
        size = snap.volume_size_gib * GIB
        written = 0
        fd = os.open(path, os.O_RDONLY)
        try:
            # written-back first: SEEK_DATA misses dirty pages over unwritten extents
            os.fsync(fd)
            with open(snap.pack, "wb") as out:
                for start, end in data_ranges(fd, min(size, os.fstat(fd).st_size)):
                    for idx in range(start // BLOCK, -(-end // BLOCK)):
                        if idx in blocks:
                            continue
                        data = os.pread(fd, BLOCK, idx * BLOCK)
                        if len(data) < BLOCK:
                            data += bytes(BLOCK - len(data))
                        old = prev.blocks.get(idx) if prev is not None else None
                        if old is None and data == ZERO:
                            # never written: file systems report unwritten (fallocated)
                            # extents as data once their pages are cached
                            continue
                        sha = hashlib.sha256(data).digest()
                        if old is not None and old.sha == sha:
                            blocks[idx] = old
                            continue
                        if self.immutable_backing:
                            blocks[idx] = Loc(path, idx * BLOCK, sha)
                            continue
                        out.write(data)
                        blocks[idx] = Loc(snap.pack, written, sha)
                        written += BLOCK
        finally:
            os.close(fd)
        snap.blocks = blocks
        snap.complete_at = max(snap.complete_at, self.now())
        snap.ready.set()

    def delete_snapshot(self, snap_id: str) -> None:
        with self.lock:
            snap = self.snapshots[snap_id]
            snap.deleted = True
            used = {loc.pack for s in self.live_snapshots() for loc in s.blocks.values()}
            for s in self.snapshots.values():
                if s.deleted and s.pack is not None and s.pack not in used:
                    s.pack.unlink(missing_ok=True)
                    s.pack = None

    def read_block(self, snap: Snap, index: int) -> tuple[bytes, bytes]:
        """(data, sha256) of a present block."""
        loc = snap.blocks[index]
        with open(loc.pack, "rb") as f:
            data = os.pread(f.fileno(), BLOCK, loc.offset)
        return data, loc.sha

    def image_of(self, snap_id: str, out: str | os.PathLike[str]) -> Path:
        """The snapshot as a raw image (what the tests compare restore points with)."""
        snap = self.snapshots[snap_id]
        with open(out, "wb") as f:
            f.truncate(snap.volume_size_gib * GIB)
            for idx in sorted(snap.blocks):
                data, _ = self.read_block(snap, idx)
                os.pwrite(f.fileno(), data, idx * BLOCK)
        return Path(out)


def b64sha(sha: bytes) -> str:
    return base64.b64encode(sha).decode()
