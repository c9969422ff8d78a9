"""Existing snapshot drivers: dattobd and elastio-snap, through their documented tools.

When the module is loaded (`/proc/datto-info`, `/proc/elastio-snap-info`), a disk's cycle
is the one their manual pages describe:

1. first sync: `dbdctl setup-snapshot DEV COW MINOR` → the snapshot device
   `/dev/datto<MINOR>`; everything valid is read from it;
2. after the sync: `dbdctl transition-to-incremental MINOR` (the driver only marks
   changed blocks in the COW file's index);
3. next sync: `dbdctl transition-to-snapshot NEWCOW MINOR` (no write is missed between
   the two) → a new snapshot device; the previous COW file's index lists the 4 KiB blocks
   changed since the previous snapshot. We fold it into a 1 MiB bitmap kept in our state
   directory (per series uuid and sequence id), delete that COW file, and read the
   changed blocks from the snapshot device.

A sync that fails keeps its bitmap, so the next one still knows every change since the
last committed point. An unknown series, a gap in the sequence, a driver in the failure
state or a COW file that is not clean forces a hash-compare resync. `elioctl` and
`/dev/elastio-snap<MINOR>` are the same interface under other names.

Paths of the tool, the info file and the snapshot devices are configurable: the tests
inject a fake driver there (the module cannot be loaded on their machine).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import SourceError
from ...extents import Extent, clip, from_blocks, to_blocks
from ...volume.reader import FileReader
from ..base import ChangeToken, Consistency, DiskSnapshot, Host, Snapshot
from .bitmap import DirtyBitmap
from .dattobd import changed_extents, read_header
from .devices import mounts_of, resolve

log = logging.getLogger(__name__)

SOURCE = "agent-snapdriver"
#: state bits of /proc/<driver>-info devices (dattobd's SNAPSHOT, ACTIVE, UNVERIFIED)
ST_SNAPSHOT, ST_ACTIVE, ST_UNVERIFIED = 1, 2, 4
KEEP = 16


@dataclass
class Driver:
    """One driver's user-space interface."""

    kind: str  # "dattobd" or "elastio-snap"
    ctl: str  # dbdctl / elioctl
    info: Path  # /proc/datto-info / /proc/elastio-snap-info
    snap_dev: str  # "/dev/datto{minor}"

    @classmethod
    def named(cls, kind: str) -> Driver:
        if kind == "dattobd":
            return cls(kind, "dbdctl", Path("/proc/datto-info"), "/dev/datto{minor}")
        if kind == "elastio-snap":
            return cls(
                kind, "elioctl", Path("/proc/elastio-snap-info"), "/dev/elastio-snap{minor}"
            )
        raise SourceError(f"unknown snapshot driver {kind!r}", "use dattobd or elastio-snap")

    def present(self) -> bool:
        return self.info.exists() and shutil.which(self.ctl) is not None

    def devices(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.info.read_text())
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot read {self.info} ({exc})", f"is {self.kind} loaded?") from None
        return list(data.get("devices") or [])

    def entry(self, device: str) -> dict[str, Any] | None:
        real = os.path.realpath(device)
        for d in self.devices():
            if os.path.realpath(str(d.get("block_device"))) == real:
                return d
        return None

    def free_minor(self) -> int:
        used = {int(d["minor"]) for d in self.devices()}
        return next(m for m in range(1 << 20) if m not in used)

    def run(self, *args: str) -> None:
        proc = subprocess.run([self.ctl, *args], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise SourceError(
                f"{self.ctl} {' '.join(args)} failed ({proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-300:]}",
                f"see dmesg and {self.info}",
            )


def detect(kinds: Iterable[str] = ("dattobd", "elastio-snap")) -> Driver | None:
    """The first driver whose module is loaded and whose tool is installed."""
    for k in kinds:
        d = Driver.named(k)
        if d.present():
            return d
    return None


@dataclass
class DriverDiskSpec:
    name: str
    device: str
    #: directory for COW files: must be on `device` itself (default: its mountpoint)
    cow_dir: str | None = None


class DriverDisk(DiskSnapshot):
    """A disk read from the driver's snapshot device."""

    def __init__(self, spec: DriverDiskSpec, path: str, token: dict[str, Any]) -> None:
        self.name = spec.name
        self.path = path
        self.reader = FileReader(path)
        self.size = self.reader.size
        self.first_pass: list[Extent] = []
        self._token = token

    def extents(self) -> Iterable[Extent]:
        return self.first_pass

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        return self.reader.read_into(offset, buf)

    @property
    def token(self) -> ChangeToken:
        return ChangeToken(SOURCE, self._token)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, **self._token}

    def close(self) -> None:
        self.reader.close()


class DriverSnapshot(Snapshot):
    def __init__(self, host: DriverHost, disks: list[DriverDisk], minors: list[int]) -> None:
        self.host = host
        self.disks: list[DiskSnapshot] = list(disks)
        self.parts = disks
        self.minors = minors
        # the driver takes a block-level snapshot; we do not freeze the file system around
        # it, so we claim crash consistency only
        self.consistency: Consistency = "crash"

    def release(self) -> None:
        for d, minor in zip(self.parts, self.minors, strict=True):
            d.close()
            self.host.driver.run("transition-to-incremental", str(minor))


class DriverHost(Host):
    """A host whose disks the dattobd / elastio-snap module snapshots and tracks."""

    def __init__(
        self, name: str, disks: list[DriverDiskSpec], state_dir: Path, driver: Driver
    ) -> None:
        self.name = name
        self.specs = disks
        self.state_dir = Path(state_dir)
        self.driver = driver
        self.trackers: dict[str, Any] = {}

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.driver.info.exists():
            raise SourceError(f"{self.driver.kind} is not loaded ({self.driver.info} missing)")

    def stop(self) -> None:
        return None

    def describe(self) -> str:
        return f"{self.driver.kind}:" + ",".join(f"{s.name}={s.device}" for s in self.specs)

    def _mountpoint(self, spec: DriverDiskSpec) -> Path:
        ms = [m for m in mounts_of(resolve(spec.device)) if not m.read_only]
        if not ms:
            raise SourceError(
                f"{spec.device} is not mounted read-write",
                f"{self.driver.kind} keeps its COW file on the device itself: mount it",
            )
        return Path(ms[0].mountpoint)

    def _bits(self, uuid: str, seq: int) -> Path:
        return self.state_dir / f"{self.driver.kind}-{uuid}-{seq}.bits"

    def snapshot(self, since: ChangeToken | None) -> DriverSnapshot:
        prev = since.value if since is not None and since.source == SOURCE else {}
        disks: list[DriverDisk] = []
        minors: list[int] = []
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            for s in self.specs:
                tok = (prev.get(s.name) or {}).get("value") or {}
                d, minor = self._one(s, tok if since is not None else None)
                disks.append(d)
                minors.append(minor)
        except BaseException:
            for d in disks:
                d.close()
            for m in minors:
                self.driver.run("transition-to-incremental", str(m))
            raise
        return DriverSnapshot(self, disks, minors)

    def _one(
        self, s: DriverDiskSpec, tok: dict[str, Any] | None
    ) -> tuple[DriverDisk, int]:
        drv = self.driver
        e = drv.entry(s.device)
        mnt = self._mountpoint(s)
        cow_dir = Path(s.cow_dir) if s.cow_dir else mnt
        why: str | None = None
        if e is not None and "error" in e and int(e["error"] or 0) != 0:
            why = f"the driver failed on {s.device} (error {e['error']})"
            drv.run("destroy", str(e["minor"]))
            e = None
        if e is None:
            minor = drv.free_minor()
            drv.run("setup-snapshot", s.device, str(cow_dir / f".openbdr-cow-{minor}-1"), str(minor))
            e = drv.entry(s.device)
            if e is None:
                raise SourceError(f"{drv.kind} set up no snapshot of {s.device}")
            why = why or "the driver was not tracking this device"
        else:
            minor = int(e["minor"])
            state = int(e["state"])
            if state & ST_SNAPSHOT:  # a sync died before going back to incremental
                drv.run("transition-to-incremental", str(minor))
                e = drv.entry(s.device) or e
            old_cow = mnt / str(e["cow_file"]).lstrip("/")  # named relative to the mount
            uuid, seq = str(e["uuid"]), int(e["seq_id"])
            new_cow = cow_dir / f".openbdr-cow-{minor}-{seq + 1}"
            drv.run("transition-to-snapshot", str(new_cow), str(minor))
            self._fold(old_cow, uuid, seq, resolve_size(s.device))
            e = drv.entry(s.device) or {}
        uuid, seq = str(e["uuid"]), int(e["seq_id"])
        path = drv.snap_dev.format(minor=minor)
        token = {"driver": drv.kind, "uuid": uuid, "seq": seq, "minor": minor}
        d = DriverDisk(s, path, token)
        changed = None
        if tok is not None and why is None:
            changed, why = self._changes(tok, uuid, seq, d.size)
        if changed is not None:
            d.incremental = True
            d.first_pass = changed
        else:
            if tok is not None:
                d.fallback_reason = f"{why}: hash-compare resync"
            from ..replay import analyze_replayed

            # a snapshot of a mounted XFS or ext4 has a log to replay: on an overlay
            layout = analyze_replayed(d.reader, path)
            d.first_pass = clip(layout.valid_extents, d.size)
            fallbacks = layout.fallbacks()
            if fallbacks:
                d.fallback_reason = "; ".join(
                    filter(None, [d.fallback_reason, "valid data: " + "; ".join(fallbacks)])
                )
        return d, minor

    def _fold(self, cow: Path, uuid: str, seq: int, size: int) -> None:
        """The old COW file's index → the 1 MiB bitmap of the changes up to snapshot seq+1
        (named by the sequence id it leads to); then the COW file goes."""
        try:
            head = read_header(cow)
        except FileNotFoundError:
            log.warning("COW file %s is gone: the next sync resyncs", cow)
            return
        if head.uuid.replace("-", "") != uuid.replace("-", "") or head.seqid != seq:
            log.warning("COW file %s is of series %s/%d, not %s/%d", cow, head.uuid, head.seqid, uuid, seq)
        else:
            bits = DirtyBitmap(size)
            for e in changed_extents(cow, size):
                bits.mark(e.offset, e.length)
            tmp = self._bits(uuid, seq + 1).with_suffix(".tmp")
            tmp.write_bytes(bytes(bits.bits))
            os.replace(tmp, self._bits(uuid, seq + 1))
        cow.unlink(missing_ok=True)
        old = sorted(self.state_dir.glob(f"{self.driver.kind}-{uuid}-*.bits"))
        for p in old:
            if int(p.stem.rsplit("-", 1)[1]) <= seq + 1 - KEEP:
                p.unlink()

    def _changes(
        self, tok: dict[str, Any], uuid: str, seq: int, size: int
    ) -> tuple[list[Extent] | None, str | None]:
        if tok.get("driver") != self.driver.kind or str(tok.get("uuid")) != uuid:
            return None, "the previous point is of another snapshot series"
        since = int(tok.get("seq", -1))
        if since >= seq:
            return None, f"sequence {since} is not before the driver's {seq}"
        bits = DirtyBitmap(size)
        for q in range(since + 1, seq + 1):
            p = self._bits(uuid, q)
            if not p.exists():
                return None, f"the changes up to snapshot {q} are not known"
            bits |= DirtyBitmap(size, p.read_bytes())
        return from_blocks(to_blocks(bits.extents(), size), size), None


def resolve_size(device: str) -> int:
    with open(device, "rb") as f:
        return f.seek(0, os.SEEK_END)

