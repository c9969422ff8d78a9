"""Copy-on-write volumes the agent creates itself: true point-in-time snapshots.

A volume (`cowstore.CowStore`, served by the `cowfuse` daemon) is a FUSE file with a
loop device on it. Its daemon sees every write, so the changed-block list is exact, and
its snapshot is a copy of the block map: the file systems on all the host's volumes are
frozen only around that map switch (flush + `FIFREEZE`, snapshot, `FITHAW`: a few ms),
then the sync reads the frozen map's slots straight from the volume's data file while
applications keep writing (their writes go to new slots). Releasing the snapshot frees
the old slots.

`create`/`attach`/`detach` manage a volume's life (`openbdr agent volume …`); `CowVolHost`
is the source.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...blocks import BLOCK_SIZE
from ...extents import Extent, clip, from_blocks, intersect, to_blocks
from ...volume.model import FilesystemInfo
from ..base import ChangeToken, Consistency, DiskSnapshot, Host, Snapshot
from .cowfuse import FILE, control_path
from .cowstore import UNMAPPED, CowStore, VolumeError
from .devices import mounts_of, resolve
from .freeze import Freezer, FreezeWindow, syncfs
from .source import kernel_maps

log = logging.getLogger(__name__)

SOURCE = "agent-cowvol"
ATTACHED = "attached.json"


# -- volume life cycle ----------------------------------------------------------------
def request(root: Path, cmd: str, timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
    """One command to a volume's daemon."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(str(control_path(root)))
    except (FileNotFoundError, ConnectionRefusedError):
        raise VolumeError(
            f"volume {root} is not attached", f"openbdr agent volume attach {root}"
        ) from None
    try:
        s.sendall(json.dumps({"cmd": cmd, **kw}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            part = s.recv(1 << 20)
            if not part:
                break
            data += part
    finally:
        s.close()
    reply: dict[str, Any] = json.loads(data or b"{}")
    if not reply.get("ok"):
        raise VolumeError(f"volume {root}: {cmd} failed: {reply.get('error', 'no answer')}")
    return reply


def create(root: Path, size: int) -> dict[str, Any]:
    store = CowStore.create(root, size)
    store.close()
    return {"dir": str(root), "id": store.id, "size": size}


def attached(root: Path) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads((Path(root) / ATTACHED).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return info


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def attach(root: Path, mountpoint: Path | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Start the volume's daemon and put a loop device on its file; return where they are."""
    root = Path(root).resolve()
    if not (root / "meta.json").exists():
        raise VolumeError(
            f"{root} is not a copy-on-write volume", f"openbdr agent volume create {root}"
        )
    info = attached(root)
    if info is not None and _pid_alive(int(info["pid"])):
        raise VolumeError(
            f"volume {root} is already attached on {info['loop']}",
            f"openbdr agent volume detach {root}",
        )
    mnt = Path(mountpoint or root / "mnt").resolve()
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)  # stale mount
    log_f = open(root / "daemon.log", "ab")  # noqa: SIM115 (handed to the daemon)
    proc = subprocess.Popen(
        [sys.executable, "-m", "openbdr.capture.linux.cowfuse", str(root), str(mnt)],
        stdin=subprocess.DEVNULL,
        stdout=log_f,
        stderr=log_f,
        start_new_session=True,
        close_fds=True,
    )
    log_f.close()
    end = time.monotonic() + timeout
    while not ((mnt / FILE).exists() and control_path(root).exists()):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            proc.wait()
            tail = (root / "daemon.log").read_text(errors="replace")[-500:]
            raise VolumeError(f"volume {root}: the daemon did not start: {tail.strip()}")
        time.sleep(0.05)
    out = subprocess.run(
        ["losetup", "-f", "--show", "--direct-io=off", str(mnt / FILE)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        subprocess.run(["umount", str(mnt)], check=False)
        proc.wait(30)
        raise VolumeError(f"volume {root}: losetup failed: {out.stderr.strip()}")
    info = {"pid": proc.pid, "mountpoint": str(mnt), "loop": out.stdout.strip()}
    (root / ATTACHED).write_text(json.dumps(info))
    return info


def detach(root: Path, timeout: float = 60.0) -> None:
    """Loop device off, FUSE unmounted (the daemon saves its state cleanly and exits)."""
    root = Path(root).resolve()
    info = attached(root)
    if info is None:
        raise VolumeError(f"volume {root} is not attached")
    loop = info["loop"]
    for m in mounts_of(resolve(loop)) if Path(loop).exists() else []:
        raise VolumeError(
            f"volume {root}: {loop} is mounted on {m.mountpoint}", "unmount it first"
        )
    subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)
    pid = int(info["pid"])
    end = time.monotonic() + timeout
    while True:  # the loop device lets go of the file asynchronously: retry the unmount
        r = subprocess.run(["umount", info["mountpoint"]], capture_output=True, text=True)
        if r.returncode == 0 or "not mounted" in r.stderr or time.monotonic() > end:
            break
        time.sleep(0.1)
    while _pid_alive(pid) and time.monotonic() < end:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _pid_alive(pid):
        raise VolumeError(f"volume {root}: daemon {pid} did not stop", "see daemon.log")
    (root / ATTACHED).unlink(missing_ok=True)


# -- the source -----------------------------------------------------------------------
@dataclass
class VolumeSpec:
    name: str
    dir: Path
    #: freeze its mounted file systems around the snapshot (False: crash-consistent)
    freeze: bool = True


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class CowVolDisk(DiskSnapshot):
    """One volume's frozen map, read straight from its data file."""

    def __init__(self, spec: VolumeSpec, snap: dict[str, Any]) -> None:
        self.name = spec.name
        self.spec = spec
        self.snap = snap
        self.size = int(snap["size"])
        self.map = array("I")
        with open(snap["map"], "rb") as f:
            self.map.frombytes(f.read())
        self.fd = os.open(snap["data"], os.O_RDONLY | os.O_CLOEXEC)
        self.first_pass: list[Extent] = []
        self.window: FreezeWindow | None = None
        self.bytes_read = 0
        self.layout: dict[str, Any] | None = None

    def mapped(self) -> list[Extent]:
        """Blocks that hold data (the others were never written or were discarded)."""
        return from_blocks([b for b, s in enumerate(self.map) if s != UNMAPPED], self.size)

    def extents(self) -> Iterable[Extent]:
        return self.first_pass

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self.size - offset))
        got = 0
        while got < want:
            b, within = divmod(offset + got, BLOCK_SIZE)
            n = min(want - got, BLOCK_SIZE - within)
            part = view[got : got + n]
            slot = self.map[b]
            if slot == UNMAPPED:
                part[:] = bytes(n)
            else:
                r = os.preadv(self.fd, [part], slot * BLOCK_SIZE + within)
                if r < n:  # a slot's unwritten tail is a hole past the end of the file
                    part[r:] = bytes(n - r)
                self.bytes_read += r
            got += n
        return got

    @property
    def token(self) -> ChangeToken:
        w = self.window
        return ChangeToken(
            SOURCE,
            {
                "volume": self.snap["volume"],
                "session": self.snap["session"],
                "gen": self.snap["gen"],
                "capture": {
                    "data_read_bytes": self.bytes_read,
                    "freezes": []
                    if w is None or not w.mountpoints
                    else [
                        {
                            "at": _when(w.started),
                            "seconds": round(w.seconds, 4),
                            "mountpoints": w.mountpoints,
                        }
                    ],
                },
            },
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "snapshot": self.snap["id"]}

    def close(self) -> None:
        os.close(self.fd)
        try:
            request(self.spec.dir, "release", id=self.snap["id"])
        except VolumeError as exc:  # the daemon restarted: its snapshots are gone anyway
            log.warning("%s", exc)


class CowVolSnapshot(Snapshot):
    def __init__(self, disks: list[CowVolDisk], consistency: Consistency) -> None:
        self.disks: list[DiskSnapshot] = list(disks)
        self.vols = disks
        self.consistency: Consistency = consistency

    def release(self) -> None:
        for d in self.vols:
            d.close()


class CowVolHost(Host):
    """A host whose protected disks are copy-on-write volumes of this agent."""

    def __init__(
        self,
        name: str,
        volumes: list[VolumeSpec],
        freeze_timeout: float = 10.0,
        frozen_hook: str | None = None,
    ) -> None:
        if not volumes:
            raise VolumeError(f"host {name}: no volumes configured")
        self.name = name
        self.volumes = volumes
        self.freeze_timeout = freeze_timeout
        self.frozen_hook = frozen_hook
        self.trackers: dict[str, Any] = {}  # the daemon's status() shape: nothing to track

    def start(self) -> None:
        for v in self.volumes:
            request(v.dir, "status")  # attached and answering

    def stop(self) -> None:
        return None

    def describe(self) -> str:
        return "cowvol:" + ",".join(f"{v.name}={v.dir}" for v in self.volumes)

    def _mounts(self) -> tuple[list[str], set[str]]:
        """Mountpoints to freeze, and the volumes with a rw file system left unfrozen."""
        mps: list[str] = []
        unfrozen: set[str] = set()
        for v in self.volumes:
            info = attached(v.dir)
            if info is None:
                raise VolumeError(f"volume {v.dir} is not attached")
            for m in mounts_of(resolve(info["loop"])):
                if m.read_only:
                    continue
                if v.freeze:
                    mps.append(m.mountpoint)
                else:
                    unfrozen.add(v.name)
        return mps, unfrozen

    def snapshot(self, since: ChangeToken | None) -> CowVolSnapshot:
        prev = since.value if since is not None and since.source == SOURCE else {}
        mps, unfrozen = self._mounts()
        syncfs(mps)  # write back first, so the freeze has little to flush
        snaps: list[tuple[VolumeSpec, dict[str, Any]]] = []
        #: a full pass's mounted file systems, mapped by the kernel at the snapshot instant
        known: dict[str, dict[int, FilesystemInfo]] = {}
        fz = Freezer(mps, self.freeze_timeout)
        try:
            with fz:
                for v in self.volumes:
                    tok = ((prev.get(v.name) or {}).get("value")) or None
                    want = None if since is None or not tok else tok
                    snaps.append((v, request(v.dir, "snapshot", since=want)))
                    if want is None and v.name not in unfrozen:
                        known[v.name] = self._kernel_maps(v)
                if self.frozen_hook:
                    self._hook()
            if fz.expired:
                raise VolumeError(
                    f"host {self.name}: the snapshot outlived the {self.freeze_timeout} s freeze",
                    "raise freeze_timeout",
                )
        except BaseException:
            for v, s in snaps:
                request(v.dir, "release", id=s["id"])
            raise
        disks = [CowVolDisk(v, s) for v, s in snaps]
        for d in disks:
            d.window = fz.window
            tok = ((prev.get(d.name) or {}).get("value")) or {}
            changed = d.snap["changed"]
            if since is not None and tok and tok.get("volume") != d.snap["volume"]:
                changed, d.snap["why"] = None, "another volume"
            if changed is not None:
                d.incremental = True
                d.first_pass = from_blocks(changed, d.size)
                continue
            if since is not None:
                d.fallback_reason = (
                    f"{d.snap.get('why') or 'the previous point was not taken from this volume'}"
                    ": hash-compare resync"
                )
            d.first_pass = self._valid(d, d.name not in unfrozen, known.get(d.name))
        return CowVolSnapshot(disks, "crash" if unfrozen else "filesystem")

    @staticmethod
    def _kernel_maps(v: VolumeSpec) -> dict[int, FilesystemInfo]:
        info = attached(v.dir)
        if info is None:
            return {}
        dev = resolve(info["loop"])
        return kernel_maps(dev, mounts_of(dev))

    @staticmethod
    def _valid(
        d: CowVolDisk, current: bool, known: dict[int, FilesystemInfo] | None = None
    ) -> list[Extent]:
        """Mapped blocks, narrowed by the file-system bitmaps when they are current (frozen
        or unmounted) — for mounted ones the kernel's map taken under the freeze (`known`):
        a frozen XFS log still holds transactions. Whole blocks: the point then holds each
        block exactly as frozen, so later trust-but-verify reads compare like with like."""
        mapped = d.mapped()
        if not current:
            return mapped
        from ...volume import analyze

        layout = analyze(d, known)
        d.layout = layout.to_json()
        why = layout.fallbacks()
        if why:
            d.fallback_reason = "; ".join(
                filter(None, [d.fallback_reason, "valid data: " + "; ".join(why)])
            )
        valid = intersect(mapped, clip(layout.valid_extents, d.size))
        return from_blocks(to_blocks(valid, d.size), d.size)

    def _hook(self) -> None:
        assert self.frozen_hook is not None
        env = dict(os.environ)
        env["OPENBDR_DEVICES"] = " ".join(
            str((attached(v.dir) or {}).get("loop", "")) for v in self.volumes
        )
        proc = subprocess.run(
            self.frozen_hook,
            shell=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, self.freeze_timeout / 2),
        )
        if proc.returncode != 0:
            raise VolumeError(f"frozen hook {self.frozen_hook!r} failed: {proc.stderr[-300:]}")
