"""Local volumes: a raw file written in place, with an undo journal per snapshot.

    <root>/<volume>/data.raw        the live content (newest state, written in place)
    <root>/<volume>/state.json      logical size, snapshots oldest first, each with its journal
    <root>/<volume>/undo-<n>.log    pre-images of blocks overwritten after snapshot n

Why raw with an undo journal rather than qcow2: writes are plain `pwrite`s from Python
threads (no QEMU process in the data path), the newest point reads at raw speed, and the
crash argument is short. A block's pre-image is appended to the newest snapshot's journal
and fsynced (group commit: one fdatasync covers every thread waiting) before the block is
overwritten, so at every instant snapshot k reads as: the first journal from k onwards that
holds the block, else the live file. A torn journal tail (crash mid-append) is cut on open:
its block was never overwritten. A snapshot is `fsync(data)` then a new empty journal then
an atomic rename of `state.json`; until the rename the snapshot does not exist. Deleting the
oldest snapshot drops its journal; deleting another merges its journal into the previous one
(only blocks that one lacks, which held the same bytes at both instants) before the state
forgets it. The cost is reverse-incremental: older points read through more journals.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

from ...blocks import BLOCK_SIZE, ZERO_BLOCK, block_count, is_zero
from ...errors import CorruptionError
from ...writeback import Writeback
from .volumes import (
    SnapshotInfo,
    Volume,
    VolumeError,
    VolumeFull,
    VolumeStore,
    check_name,
    register_backend,
)

REC = struct.Struct("<4sIQII")  # magic, flags, block, length, crc32(payload)
MAGIC = b"OBUJ"
ZERO_FLAG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _punch(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range (it reads as zeros); False when the file system cannot."""
    try:
        return _libc.fallocate(fd, 3, ctypes.c_long(offset), ctypes.c_long(length)) == 0
    except AttributeError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _no_space(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return VolumeFull(f"{what}: no space left on the gateway's volume store", "free space")
    return VolumeError(f"{what}: {exc.strerror}")


class _Journal:
    """One undo journal: block → (payload offset, length, zero) of its pre-image."""

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = path
        self.fd = os.open(path, (os.O_RDWR | os.O_CREAT) if writable else os.O_RDONLY, 0o600)
        self.map: dict[int, tuple[int, int, bool]] = {}
        self.end = 0
        self.synced = 0
        self._scan(truncate=writable)

    def _scan(self, truncate: bool) -> None:
        size = os.fstat(self.fd).st_size
        pos = 0
        while pos + REC.size <= size:
            magic, flags, block, length, crc = REC.unpack(os.pread(self.fd, REC.size, pos))
            if magic != MAGIC or pos + REC.size + length > size:
                break
            if length and zlib.crc32(os.pread(self.fd, length, pos + REC.size)) != crc:
                break
            self.map.setdefault(block, (pos + REC.size, length, bool(flags & ZERO_FLAG)))
            pos += REC.size + length
        if pos != size:
            if not truncate:
                raise CorruptionError(f"undo journal {self.path}: damaged at byte {pos}")
            os.ftruncate(self.fd, pos)  # a torn append: its block was never overwritten
            os.fsync(self.fd)
        self.end = self.synced = pos

    def append(self, block: int, pre: bytes) -> int:
        """Add a pre-image (caller holds the volume's lock); returns the record's end."""
        zero = is_zero(pre)
        payload = b"" if zero else pre
        rec = REC.pack(MAGIC, ZERO_FLAG if zero else 0, block, len(payload), zlib.crc32(payload))
        buf = rec + payload
        if os.pwrite(self.fd, buf, self.end) != len(buf):  # a full disk writes short
            os.ftruncate(self.fd, self.end)
            raise OSError(errno.ENOSPC, "short write to the undo journal")
        self.map[block] = (self.end + REC.size, len(payload), zero)
        self.end += REC.size + len(payload)
        return self.end

    def read(self, block: int) -> bytes | None:
        hit = self.map.get(block)
        if hit is None:
            return None
        off, length, zero = hit
        if zero:
            return ZERO_BLOCK
        data = os.pread(self.fd, length, off)
        crc = REC.unpack(os.pread(self.fd, REC.size, off - REC.size))[4]
        if len(data) != length or zlib.crc32(data) != crc:
            raise CorruptionError(f"undo journal {self.path}: block {block} is damaged")
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class FileVolume(Volume):
    def __init__(self, path: Path, name: str, size: int | None) -> None:
        self.path = path
        self.name = name
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        state_path = path / "state.json"
        if not state_path.exists():
            if size is None:
                raise VolumeError(f"volume {name} does not exist")
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / "data.raw", os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(fd, size)
            os.close(fd)
            _atomic_write(
                state_path, json.dumps({"size": size, "snapshots": [], "next": 1}).encode()
            )
            _fsync_dir(path.parent)
        self.state: dict[str, Any] = json.loads(state_path.read_bytes())
        self.fd = os.open(path / "data.raw", os.O_RDWR)
        # write-out starts as blocks arrive: a checkpoint's fsync then finds little dirty
        # (without it each one wrote gigabytes while the sender waited)
        self._writeback = Writeback(self.fd)
        self._journals: dict[str, _Journal] = {}
        known = {s["journal"] for s in self.state["snapshots"]}
        for p in path.glob("undo-*.log"):
            if p.name not in known:  # made by a snapshot that crashed before its rename
                p.unlink()
        #: block → end offset of its pre-image record in the open journal
        self._jend: dict[int, int] = {}

    # -- helpers -------------------------------------------------------------
    def _journal(self, fname: str) -> _Journal:
        j = self._journals.get(fname)
        if j is None:
            newest = self.state["snapshots"][-1]["journal"] == fname
            j = self._journals[fname] = _Journal(self.path / fname, writable=newest)
        return j

    def _open_journal(self) -> _Journal | None:
        snaps = self.state["snapshots"]
        return self._journal(snaps[-1]["journal"]) if snaps else None

    def _save_state(self) -> None:
        _atomic_write(self.path / "state.json", json.dumps(self.state).encode())

    def _high_block(self) -> int:
        """Blocks at or past this index belong to no snapshot: no pre-image needed."""
        return max((block_count(s["size"]) for s in self.state["snapshots"]), default=0)

    def _protect(self, offset: int, length: int) -> None:
        """Journal (durably) the pre-image of every block this write overwrites."""
        if length <= 0 or not self.state["snapshots"]:
            return
        first, last = offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE
        need = 0
        with self._lock:  # one journal object per file: its map and end are the truth
            j = self._open_journal()
            if j is None:
                return
            high = self._high_block()
            for b in range(first, min(last + 1, high)):
                end = self._jend.get(b)
                if end is None:
                    if b in j.map:  # journaled before a restart: durable already
                        continue
                    pre = os.pread(self.fd, BLOCK_SIZE, b * BLOCK_SIZE)
                    end = self._jend[b] = j.append(b, pre)
                need = max(need, end)
        if need > j.synced:
            with self._sync_lock:  # group commit: one fdatasync for every waiting writer
                if need > j.synced:
                    target = j.end
                    os.fdatasync(j.fd)
                    j.synced = max(j.synced, target)

    # -- the contract --------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.state["size"])

    def resize(self, size: int) -> None:
        old = self.size
        if size == old:
            return
        if size > old:
            phys = os.fstat(self.fd).st_size
            if phys > old:  # a shrink left old bytes there: a grown disk reads zeros
                self.write_zeroes(old, min(size, phys) - old)
            if size > phys:
                os.ftruncate(self.fd, size)
        with self._lock:  # the file never shrinks: older snapshots may still read the tail
            self.state["size"] = size
            self._save_state()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise VolumeError(f"volume {self.name}: write past its end ({offset}+{len(data)})")
        try:
            self._protect(offset, len(data))
            if os.pwrite(self.fd, data, offset) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            self._writeback.wrote(len(data))
        except OSError as exc:
            raise _no_space(exc, f"volume {self.name}") from None

    def write_zeroes(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > max(self.size, os.fstat(self.fd).st_size):
            raise VolumeError(f"volume {self.name}: zeroing past its end")
        try:
            self._protect(offset, length)
            if not _punch(self.fd, offset, length):
                pos = offset
                while pos < offset + length:
                    n = min(BLOCK_SIZE, offset + length - pos)
                    os.pwrite(self.fd, ZERO_BLOCK[:n], pos)
                    pos += n
        except OSError as exc:
            raise _no_space(exc, f"volume {self.name}") from None

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        data = os.pread(self.fd, length, offset)
        return data + bytes(length - len(data))

    def flush(self) -> None:
        os.fsync(self.fd)

    def snapshot(self, name: str) -> SnapshotInfo:
        check_name(name, "snapshot")
        for s in self.state["snapshots"]:
            if s["name"] == name:
                return SnapshotInfo(name, int(s["size"]))
        self.flush()
        with self._lock:
            fname = f"undo-{self.state['next']}.log"
            j = self._open_journal()
            fd = os.open(self.path / fname, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            _fsync_dir(self.path)
            self.state["snapshots"].append({"name": name, "size": self.size, "journal": fname})
            self.state["next"] += 1
            self._save_state()
            if j is not None:
                j.close()  # sealed: reopened read-only when a snapshot read needs it
                self._journals = {k: v for k, v in self._journals.items() if v is not j}
            self._jend = {}
        return SnapshotInfo(name, self.size)

    def snapshots(self) -> list[SnapshotInfo]:
        return [SnapshotInfo(s["name"], int(s["size"])) for s in self.state["snapshots"]]

    def delete_snapshot(self, name: str) -> None:
        with self._lock:
            snaps = self.state["snapshots"]
            pos = next((k for k, s in enumerate(snaps) if s["name"] == name), None)
            if pos is None:
                return
            gone = snaps[pos]
            j = self._journal(gone["journal"])
            if pos > 0:  # the older snapshot needs the blocks only this journal holds
                prev = snaps[pos - 1]
                pj = self._journals.pop(prev["journal"], None)
                if pj is not None:
                    pj.close()
                pj = _Journal(self.path / prev["journal"], writable=True)
                for b in sorted(set(j.map) - set(pj.map)):
                    pre = j.read(b)
                    assert pre is not None
                    pj.append(b, pre)
                os.fsync(pj.fd)
                pj.close()
            del snaps[pos]
            self._save_state()
            j.close()
            self._journals = {}
            self._jend = {}
            (self.path / gone["journal"]).unlink(missing_ok=True)

    def read_snapshot(self, name: str, offset: int, length: int) -> bytes:
        with self._lock:
            snaps = self.state["snapshots"]
            pos = next((k for k, s in enumerate(snaps) if s["name"] == name), None)
            if pos is None:
                raise VolumeError(f"volume {self.name} has no snapshot {name}")
            size = int(snaps[pos]["size"])
            journals = [self._journal(s["journal"]) for s in snaps[pos:]]
            length = max(0, min(length, size - offset))
            out = bytearray()
            pos_b = offset
            while pos_b < offset + length:
                b = pos_b // BLOCK_SIZE
                start = pos_b - b * BLOCK_SIZE
                n = min(BLOCK_SIZE - start, offset + length - pos_b)
                block = None
                for j in journals:
                    block = j.read(b)
                    if block is not None:
                        break
                if block is None:
                    piece = os.pread(self.fd, n, pos_b)
                    piece += bytes(n - len(piece))
                else:
                    piece = bytes(block[start : start + n]).ljust(n, b"\0")
                out += piece
                pos_b += n
            return bytes(out)

    def close(self) -> None:
        for j in self._journals.values():
            j.close()
        self._journals = {}
        with contextlib.suppress(OSError):
            os.close(self.fd)


class FileStore(VolumeStore):
    def __init__(self, url: str) -> None:
        path = url[len("file://") :] if url.startswith("file://") else url
        self.root = Path(path)
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root.resolve()}"
        self._open: dict[str, FileVolume] = {}
        self._lock = threading.Lock()

    def open(self, name: str, size: int | None = None) -> Volume:
        check_name(name)
        with self._lock:
            vol = self._open.get(name)
            if vol is None:
                vol = self._open[name] = FileVolume(self.root / name, name, size)
            return vol

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "state.json").exists())

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            vol = self._open.pop(name, None)
            if vol is not None:
                vol.close()
            d = self.root / name
            if d.exists():
                (d / "state.json").unlink(missing_ok=True)  # gone from now on, even half-deleted
                for p in d.iterdir():
                    p.unlink()
                d.rmdir()

    def close(self) -> None:
        with self._lock:
            for v in self._open.values():
                v.close()
            self._open = {}


register_backend("file", FileStore)
