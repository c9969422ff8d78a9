"""The agent's source: live disks captured in passes, consistent under a short freeze.

`snapshot(since)` starts a capture at instant T0. For a disk whose tracker knows every
change since the `since` token (incremental), the changed blocks are *pending*: `settle()`
copies them into a local staging file at device speed, not through the sync engine, so
the pass is short and few of them are written again before the freeze. Otherwise the first
pass lists the valid data, analysed under a brief freeze so that the file-system bitmaps
are current (a full pass, or a hash-compare resync), and the sync engine reads it from the
live device. `settle()` then re-copies the blocks written since: live passes while
applications run, and a last one under `FIFREEZE` with the tracker's final cut, so the
staged blocks plus the unchanged rest are the disk at one instant. It returns the staged
blocks; the engine stores them (over its first pass). The token names the tracker
generation that starts at the final cut.

**Each changed block read about once.** A block staged whole is re-copied only in the
4 KiB pages written since (the tracker keeps page masks during a capture), so a hot block
that a database rewrites 8 KiB at a time costs a few pages per pass, not 1 MiB. Go to the
freeze as soon as what it would copy fits `freeze_copy_blocks` MiB; stop the live passes
when one would copy more than `SHRINK` of the bytes of the previous one (the writes outpace
the passes: another would re-read the same hot pages).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...blocks import BLOCK_SIZE
from ...errors import SourceError
from ...extents import Extent, clip, from_blocks, to_blocks
from ...volume import fsmap
from ...volume.model import DiskLayout, FilesystemInfo
from ..base import ChangeToken, Consistency, DiskSnapshot, Host, Snapshot
from ..replay import analyze_replayed, needs_replay
from .bitmap import DirtyBitmap
from .devices import BlockDevice, Mount, boot_id, device_of_path, mounts_of, resolve, span_on_disk
from .direct import DirectReader
from .freeze import Freezer, FreezeWindow, syncfs
from .staging import Staging, StagingMemory, memory_budget
from .tracker import PAGE, DiskTracker

log = logging.getLogger(__name__)

SOURCE = "agent"
#: a live pass that would copy more than this share of the previous pass's bytes ends the
#: live passes: they no longer converge
SHRINK = 0.5


@dataclass
class DiskSpec:
    """A protected disk: its stable name in restore points and its block device."""

    name: str
    device: str
    #: freeze its mounted file systems for the final pass (False: crash-consistent only)
    freeze: bool = True


@dataclass
class CaptureOptions:
    #: the watchdog thaws after this many seconds, whatever the agent does
    freeze_timeout: float = 10.0
    #: at most this many live passes before the final frozen one
    max_passes: int = 4
    #: attempts at the final pass when the watchdog had to thaw first
    final_attempts: int = 3
    #: the frozen pass should copy at most about this many blocks: live passes stop once
    #: the rest fits (an incremental that fits is copied whole under the freeze)
    freeze_copy_blocks: int = 64
    #: incrementals up to this many blocks are staged at device speed before the engine
    #: reads them (when the state directory has twice the room); larger ones are read
    #: by the engine from the live device
    stage_blocks: int = 16384
    #: staged blocks are kept in memory up to this many bytes for the whole host (at most a
    #: quarter of the memory available at the start of a capture), in the state directory
    #: beyond
    stage_memory: int = 1 << 30
    #: staging memory is kept this many seconds after a sync for the next one (its first
    #: use costs page faults: ~0.8 s of CPU per 700 MiB on a virtual machine), then
    #: given back; 0 gives it back at once
    stage_keep: float = 120.0
    #: a command run while the file systems are frozen (array snapshots, checks)
    frozen_hook: str | None = None


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class LiveDisk(DiskSnapshot):
    """One disk of a capture: the live device until `settle`, then device + staged blocks."""

    def __init__(
        self,
        spec: DiskSpec,
        dev: BlockDevice,
        tracker: DiskTracker,
        staging_dir: Path,
        memory: StagingMemory | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.dev = dev
        self.size = dev.size
        self.tracker = tracker
        self.capture_id = uuid.uuid4().hex
        self.reader = DirectReader(dev.path, dev.size)
        self.staging = Staging(
            staging_dir / f"{spec.name}-{self.capture_id}.staging", dev.size, memory
        )
        self.first_pass: list[Extent] = []
        self.valid_bytes = dev.size
        self.layout: dict[str, Any] | None = None
        self.mounts: list[Mount] = mounts_of(dev)
        self.settled = False
        self.generation = -1
        self.passes = 1
        self.windows: list[FreezeWindow] = []
        #: changed blocks since the token, not read yet: the first live pass stages them
        self.pending: list[int] = []
        #: bytes each live pass and the frozen one copied (recorded in the token)
        self.pass_bytes: list[int] = []
        #: trust-but-verify re-reads this many unchanged blocks (set per capture)
        self.trust_sample = 8

    @property
    def rw_mounts(self) -> list[Mount]:
        return [m for m in self.mounts if not m.read_only]

    def extents(self) -> Iterable[Extent]:
        return self.first_pass

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self.size - offset))
        got = 0
        while got < want:
            pos = offset + got
            b = pos // BLOCK_SIZE
            n = min(want - got, (b + 1) * BLOCK_SIZE - pos)
            part = view[got : got + n]
            if self.settled and b in self.staging:
                r = self.staging.read_into(pos, part)
            else:
                r = self.reader.read_into(pos, part)
            got += r
            if r < n:
                break
        return got

    def view(self, offset: int, length: int) -> memoryview | None:
        b = offset // BLOCK_SIZE
        if not self.settled or b not in self.staging or (offset + length - 1) // BLOCK_SIZE != b:
            return None
        return self.staging.view(offset, length)

    def moved_blocks(self, blocks: Iterable[int]) -> set[int]:
        """Of `blocks`, those the capture knows changed: written since it began, or changed
        before it and pending (so not in `extents()`). Reading them now proves
        nothing about the tracker (the sync engine's trust-but-verify skips them)."""
        moved = self.tracker.peek()
        known = set(self.pending)
        return {b for b in blocks if b in moved or b in self.staging or b in known}

    @property
    def token(self) -> ChangeToken:
        if not self.settled:
            raise SourceError(
                f"disk {self.name}: the capture was not settled",
                "the sync engine must call Snapshot.settle() before committing",
            )
        return ChangeToken(
            SOURCE,
            {
                "session": self.tracker.session,
                "gen": self.generation,
                "boot_id": boot_id(),
                "device": self.dev.path,
                "capture": {
                    "passes": self.passes,
                    "pass_bytes": self.pass_bytes,
                    "device_read_bytes": self.reader.bytes_read,
                    "staged_bytes": self.staging.bytes_copied,
                    "freezes": [
                        {
                            "at": _when(w.started),
                            "seconds": round(w.seconds, 4),
                            "mountpoints": w.mountpoints,
                        }
                        for w in self.windows
                    ],
                },
            },
        )

    def fingerprint(self) -> dict[str, Any]:
        # a new capture reads different instants: never resume another capture's blocks
        return {
            "name": self.name,
            "size": self.size,
            "device": self.dev.path,
            "capture": self.capture_id,
        }

    def close(self) -> None:
        self.reader.close()
        self.staging.close()


class LiveSnapshot(Snapshot):
    def __init__(self, host: AgentHost, disks: list[LiveDisk]) -> None:
        self.host = host
        self.disks: list[DiskSnapshot] = list(disks)
        self.live = disks
        unfrozen = [d for d in disks if d.rw_mounts and not d.spec.freeze]
        self.consistency: Consistency = "crash" if unfrozen else "filesystem"

    def _mountpoints(self) -> list[str]:
        return [m.mountpoint for d in self.live if d.spec.freeze for m in d.rw_mounts]

    def _freezer(self) -> Freezer:
        return Freezer(self._mountpoints(), self.host.options.freeze_timeout)

    def settle(self) -> dict[str, list[Extent]]:
        """Re-copy what changed since the capture began, last under freeze; return it per disk."""
        opts = self.host.options
        budget = opts.freeze_copy_blocks * BLOCK_SIZE
        previous: int | None = None
        for _ in range(opts.max_passes):
            cost = sum(self._cost(d, d.tracker.peek()) for d in self.live)
            if cost <= budget:
                break
            if previous is not None and cost > SHRINK * previous:
                break  # writes outpace the passes: more would re-read the same hot pages
            previous = self._live_pass()
        syncfs(self._mountpoints())  # what is dirty now is flushed outside the freeze
        for attempt in range(opts.final_attempts):
            fz = self._freezer()
            with fz:
                for d in self.live:
                    changed, d.generation = d.tracker.final_cut()
                    self._copy(d, sorted({*changed.blocks(), *d.pending}))
                if opts.frozen_hook:
                    self._run_hook(opts.frozen_hook)
            for d in self.live:
                d.windows.append(fz.window)
                d.passes += 1
                d.tracker.save()
            if not fz.expired:
                break
            log.warning("final pass outlived the freeze bound (attempt %d): again", attempt + 1)
            self._live_pass()
        else:
            raise SourceError(
                f"host {self.host.name}: the final pass did not fit in the "
                f"{opts.freeze_timeout:.0f} s freeze bound",
                "raise freeze_timeout in the agent configuration or lower the write load",
            )
        for d in self.live:
            d.settled = True
        return {d.name: clip(d.staging.blocks.extents(), d.size) for d in self.live}

    @staticmethod
    def _cost(d: LiveDisk, dirty: DirtyBitmap) -> int:
        """Bytes a pass of `d` would copy now: pending blocks whole, written ones whole or,
        when staged already, their written pages (masks of the tracker's last peek)."""
        pages = d.tracker.cut_pages
        n = len(set(d.pending) - set(dirty.blocks())) * BLOCK_SIZE
        for b in dirty.blocks():
            mask = pages.get(b) if b in d.staging else None
            n += BLOCK_SIZE if mask is None else mask.bit_count() * PAGE
        return n

    @staticmethod
    def _copy(d: LiveDisk, blocks: list[int]) -> int:
        """Stage `blocks` of `d` (pages of the tracker's last cut); returns the bytes read."""
        before = d.staging.bytes_copied
        d.staging.copy(d.reader, blocks, d.tracker.cut_pages)
        d.pending = []
        copied = d.staging.bytes_copied - before
        d.pass_bytes.append(copied)
        return copied

    def _live_pass(self) -> int:
        """One pass without freeze; returns the bytes it copied."""
        n = 0
        syncfs(self._mountpoints())
        for d in self.live:
            n += self._copy(d, sorted({*d.tracker.pass_cut().blocks(), *d.pending}))
            d.passes += 1
        return n

    def _run_hook(self, cmd: str) -> None:
        env = dict(os.environ, OPENBDR_DEVICES=" ".join(d.dev.path for d in self.live))
        proc = subprocess.run(
            cmd,
            shell=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, self.host.options.freeze_timeout / 2),
        )
        if proc.returncode != 0:
            raise SourceError(f"frozen hook {cmd!r} failed: {proc.stderr.strip()[-300:]}")

    def release(self) -> None:
        for d in self.live:
            d.tracker.end_capture()
            d.close()


def mount_spans(dev: BlockDevice, mounts: list[Mount]) -> list[tuple[Mount, int, int]]:
    """Each mount of `dev` (or of its partitions) with its (start, length) on `dev`."""
    out = []
    for m in mounts:
        start, length = span_on_disk(m.major, m.minor)
        base = 0 if (m.major, m.minor) == (dev.major, dev.minor) else start - dev.start
        if base >= 0 and base + length <= dev.size:
            out.append((m, base, length))
    return out


def kernel_maps(dev: BlockDevice, mounts: list[Mount]) -> dict[int, FilesystemInfo]:
    """The allocation of each file system mounted from `dev` (or its partitions) as the
    kernel has it, by its start on `dev`. File systems without GETFSMAP are left out
    (their on-disk structures are parsed, as for unmounted ones)."""
    out: dict[int, FilesystemInfo] = {}
    for m, base, length in mount_spans(dev, mounts):
        try:
            used = fsmap.used_extents(m.mountpoint, m.major, m.minor, length, base)
        except OSError as exc:
            log.info("%s: no kernel allocation map (%s): on-disk structures", m.mountpoint, exc)
            continue
        out[base] = FilesystemInfo(
            kind="ext4" if m.fstype in ("ext2", "ext3", "ext4") else m.fstype,
            total_bytes=length,
            used_extents=used,
            variant=m.fstype if m.fstype.startswith("ext") else None,
            mapped_by="kernel",
        )
    return out


class AgentHost(Host):
    """A host protected by the agent: trackers run from `start()` to `stop()`."""

    def __init__(
        self,
        name: str,
        disks: list[DiskSpec],
        state_dir: Path,
        options: CaptureOptions | None = None,
        buffer_kb: int = 4096,
    ) -> None:
        if not disks:
            raise SourceError(f"host {name}: no disks configured", "list at least one [[disk]]")
        self.name = name
        self.specs = disks
        self.state_dir = Path(state_dir)
        self.options = options or CaptureOptions()
        self.buffer_kb = buffer_kb
        self.devices: dict[str, BlockDevice] = {}
        self.trackers: dict[str, DiskTracker] = {}
        #: each disk's staging memory, kept between captures
        self._memory: dict[str, StagingMemory] = {}

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "staging").mkdir(exist_ok=True)
        for s in self.specs:
            self.devices[s.name] = resolve(s.device)
        self._check_state_dir()
        try:
            for s in self.specs:
                tr = DiskTracker(self.devices[s.name], self.state_dir, self.buffer_kb)
                tr.start()
                self.trackers[s.name] = tr
        except BaseException:
            self.stop()
            raise

    def _check_state_dir(self) -> None:
        here = device_of_path(str(self.state_dir))
        for s in self.specs:
            for m in mounts_of(self.devices[s.name]):
                if (m.major, m.minor) == here:
                    raise SourceError(
                        f"state directory {self.state_dir} is on protected disk {s.device}",
                        "put state_dir on another file system (it is written while frozen)",
                    )

    def stop(self) -> None:
        for tr in self.trackers.values():
            tr.stop()
        self.trackers.clear()
        for memory in self._memory.values():
            memory.close()
        self._memory.clear()

    def unprotect(self, name: str) -> list[str]:
        """Stop tracking disk `name` for good and remove what the agent made for it: its
        tracefs instance (which would otherwise keep recording), saved tracking state and
        staging files. Works whether or not the trackers run. Returns what was removed."""
        spec = next((s for s in self.specs if s.name == name), None)
        if spec is None:
            have = ", ".join(s.name for s in self.specs) or "none"
            raise SourceError(f"host {self.name} has no disk {name!r}", f"its disks: {have}")
        tracker = self.trackers.pop(name, None)
        if tracker is None:
            tracker = DiskTracker(self.devices.get(name) or resolve(spec.device), self.state_dir)
        removed = []
        if tracker.instance.exists():
            removed.append(f"tracefs instance {tracker.instance.path}")
        if tracker.state_path.exists():
            removed.append(f"tracking state {tracker.state_path}")
        tracker.release()
        for f in sorted((self.state_dir / "staging").glob(f"{name}-*.staging")):
            f.unlink(missing_ok=True)
            removed.append(f"staging file {f}")
        memory = self._memory.pop(name, None)
        if memory is not None:
            memory.close()
        self.specs = [s for s in self.specs if s.name != name]
        self.devices.pop(name, None)
        return removed

    def _staging_memory(self, name: str, budget: int) -> StagingMemory | None:
        """The disk's staging memory of the last capture while it is kept (its size was
        within the budget when made; the budget now counts its pages as taken), else new
        memory of the budget's size."""
        memory = self._memory.get(name)
        if memory is not None and memory.acquire():
            return memory
        if budget < BLOCK_SIZE:
            return None
        memory = self._memory[name] = StagingMemory(budget, self.options.stage_keep)
        memory.acquire()
        return memory

    def snapshot(self, since: ChangeToken | None) -> LiveSnapshot:
        if not self.trackers:
            raise SourceError(
                f"host {self.name}: change tracking is not running", "start the agent"
            )
        prev = since.value if since is not None and since.source == SOURCE else {}
        disks: list[LiveDisk] = []
        try:
            syncfs(
                [
                    m.mountpoint
                    for s in self.specs
                    for m in mounts_of(self.devices[s.name])
                    if not m.read_only
                ]
            )
            full: list[LiveDisk] = []
            memory = memory_budget(self.options.stage_memory) // len(self.specs)
            for s in self.specs:
                d = LiveDisk(
                    s,
                    self.devices[s.name],
                    self.trackers[s.name],
                    self.state_dir / "staging",
                    self._staging_memory(s.name, memory),
                )
                disks.append(d)
                tok = (prev.get(s.name) or {}).get("value") or {}
                if since is None:
                    full.append(d)
                    continue
                if not tok:
                    d.fallback_reason = "the previous point was not taken by this agent"
                    full.append(d)
                    continue
                changed, why = d.tracker.begin(str(tok.get("session")), int(tok.get("gen", -1)))
                if changed is None:
                    d.fallback_reason = f"{why}: hash-compare resync"
                    full.append(d)
                else:
                    d.incremental = True
                    n = changed.count()
                    d.valid_bytes = n * BLOCK_SIZE
                    d.trust_sample = max(1, min(8, n // 8))
                    opts = self.options
                    if n <= opts.freeze_copy_blocks or (
                        n <= opts.stage_blocks
                        and (n * BLOCK_SIZE <= memory or self._room(2 * n * BLOCK_SIZE))
                    ):
                        d.pending = changed.blocks()  # staged by settle(), read once
                    else:
                        d.first_pass = changed.extents()
            if full:
                self._analyse(full)
        except BaseException:
            for d in disks:
                d.close()
            raise
        return LiveSnapshot(self, disks)

    def _room(self, nbytes: int) -> bool:
        st = os.statvfs(self.state_dir / "staging")
        return st.f_bavail * st.f_frsize >= nbytes

    def _analyse(self, disks: list[LiveDisk]) -> None:
        """Valid extents at T0, found under a brief freeze: mounted file systems by the
        kernel's allocation map (`volume.fsmap`: a live log may contradict what is on
        disk), unmounted ones by their on-disk structures."""
        from ...volume import analyze

        mps = [m.mountpoint for d in disks if d.spec.freeze for m in d.rw_mounts]
        fz = Freezer(mps, self.options.freeze_timeout)
        t0 = time.monotonic()
        found: list[tuple[LiveDisk, dict[int, FilesystemInfo], DiskLayout]] = []
        with fz:
            for d in disks:
                d.tracker.begin(None, 0)
                known = kernel_maps(d.dev, d.mounts)
                found.append((d, known, analyze(d.reader, known)))
        if fz.expired:
            raise SourceError(
                f"host {self.name}: analysing the file systems outlived the freeze bound",
                "raise freeze_timeout in the agent configuration",
            )
        for d, known, layout in found:
            if mps:
                d.windows.append(fz.window)
            if any(needs_replay(fs) for fs in layout.filesystems()):
                # unmounted volumes do not change: replayed after the thaw
                mounted = {base for _m, base, _n in mount_spans(d.dev, d.mounts)}
                layout = analyze_replayed(d.reader, d.dev.path, known, skip=mounted)
            d.layout = layout.to_json()
            valid = clip(layout.valid_extents, d.size)
            d.valid_bytes = sum(e.length for e in valid)
            # whole blocks: the point holds each block as read, so a later
            # trust-but-verify read of an unchanged block compares like with like
            d.first_pass = from_blocks(to_blocks(valid, d.size), d.size)
            why = layout.fallbacks()
            if why:
                d.fallback_reason = "; ".join(
                    filter(None, [d.fallback_reason, "valid data: " + "; ".join(why)])
                )
            for note in layout.notes:
                log.info("%s: %s", d.dev.path, note)
        log.info("valid data analysed in %.3f s", time.monotonic() - t0)

    def describe(self) -> str:
        return "agent:" + ",".join(f"{s.name}={s.device}" for s in self.specs)
