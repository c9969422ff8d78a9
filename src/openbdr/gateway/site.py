"""The gateway's state: volumes written in place, restore point records, per-block hashes.

    <root>/config.json                 site id and the keyed-hash key (given to agents)
    <root>/tokens.json                 agent credentials (hashes only; `auth.py`)
    <root>/state/points/<host>/<point>.json   restore point records (manifest.RestorePoint)
    <root>/state/indexes/<point>/<disk>       keyed hash of every block (index.DiskIndex)
    <root>/state/vols/<volume>.json    what the live volume holds: its last snapshot and index,
                                       the 64-block groups written since (persisted before
                                       the first write into a group)
    <root>/state/vols/<volume>.dirty   block → hash written since that snapshot (at checkpoints)
    <root>/state/sessions/<host>.json  the open sync of a host: its disks, counters, checkpoint
    <root>/state/leases.json           the hosts' leases (holder token, owner, wall-clock
                                       expiry), rewritten atomically when a holder changes
                                       and, while one renews, every LEASE_TTL/2: a restarted
                                       gateway still refuses a second sync of the host and
                                       its gc still spares what the running sync needs
    <root>/meta/                       the target's `meta` blobs (drill reports …)

A point exists only once each of its disks' snapshots and indexes exist: the record is
written last. Before the snapshot, the commit reconciles the live volume with the point's
index: a block the sync did not send (unchanged, or all zero) must hold what the index
says; the gateway zeroes it, or copies it back from the volume's last snapshot or the
parent point's, and a block it cannot vouch for (written after the last checkpoint of a
gateway that was killed) is never assumed right.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

from ..blocks import BLOCK_SIZE, block_count, block_span
from ..chunk import HEADER as CHUNK_HEADER
from ..chunk import ZERO_ID, ChunkCodec
from ..errors import CorruptionError, LockedError, OpenBDRError
from ..store.blobs import NotFound
from ..store.block.volumes import Volume, VolumeError, open_store
from ..store.block.wire import UNKNOWN_ID, split_batch, unpack_block
from ..store.directory import DirectoryBlobs
from ..store.index import DiskIndex
from ..store.manifest import RestorePoint, check_host_name
from ..store.target import GCReport, Problem, VerifyReport

#: blocks per group of the persisted "written since the snapshot" record
GROUP = 64
STRIPES = 64
LEASE_TTL = 60.0
LEASES = "leases.json"


class LeaseHeld(LockedError):
    """Another sync holds the host's lease; `holder` says who (for a same-machine takeover)."""

    def __init__(self, what: str, hint: str, holder: dict[str, Any]) -> None:
        super().__init__(what, hint)
        self.holder = holder


class UnknownError(OpenBDRError):
    """A host, disk, point or session the gateway does not know (HTTP 404)."""


class BadBlock(OpenBDRError):
    """A block that does not fit its disk (HTTP 400)."""


class Missing(OpenBDRError):
    """The point names blocks the gateway never received (HTTP 409)."""


def point_key(host: str, point: str) -> str:
    """The gateway's record of a point (the object repository's layout, its own copy)."""
    return f"points/{host}/{point}.json"


def index_key(point: str, disk: int) -> str:
    return f"indexes/{point}/{disk}"


def volume_name(host: str, disk: str) -> str:
    """`<host>--<disk>`, the disk name made safe (with a short hash when it had to change)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", disk).strip("._-") or "disk"
    if safe != disk:
        safe += "-" + sha256(disk.encode()).hexdigest()[:8]
    return f"{host}--{safe}"


@dataclass
class VolState:
    name: str
    host: str
    vol: Volume
    base_snap: str | None
    base_key: str | None
    base: DiskIndex
    touched: set[int]
    dirty: dict[int, bytes]
    #: loaded after a restart: blocks of touched groups missing from `dirty` are unknown
    suspect: bool
    #: the volume existed without state: nothing it holds is known
    unknown_all: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: one writer at a time per block (striped): `dirty` then always names what a block
    #: holds, also when two requests write it at once (a killed sender's late put beside
    #: its successor's, a put beside the commit's copy-back)
    stripes: list[threading.Lock] = field(
        default_factory=lambda: [threading.Lock() for _ in range(STRIPES)]
    )

    def block_lock(self, i: int) -> threading.Lock:
        return self.stripes[i % STRIPES]

    def have(self, i: int) -> bytes:
        got = self.dirty.get(i)
        if got is not None:
            return got
        if self.unknown_all or (self.suspect and i // GROUP in self.touched):
            return UNKNOWN_ID
        return self.base[i] if i < self.base.count else ZERO_ID


class Site:
    def __init__(self, root: str | Path, volumes: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "config.json"
        if not cfg.exists():
            cfg.write_text(
                json.dumps(
                    {
                        "format": "openbdr-gateway",
                        "version": 1,
                        "id": str(uuid.uuid4()),
                        "hash_key": secrets.token_bytes(32).hex(),
                        "block_size": BLOCK_SIZE,
                    }
                )
            )
        self.config = json.loads(cfg.read_text())
        self.hash_key = bytes.fromhex(self.config["hash_key"])
        self.codec = ChunkCodec(self.hash_key)
        self.state = DirectoryBlobs(self.root / "state", create=True)
        self.meta = DirectoryBlobs(self.root / "meta", create=True)
        self.volumes = open_store(volumes)
        self._lock = threading.RLock()
        self._leases: dict[str, tuple[str, float, dict[str, Any] | None]] = {}
        #: host -> wall-clock expiry of its lease as persisted in leases.json
        self._saved: dict[str, float] = {}
        self._load_leases()
        self._vols: dict[str, VolState] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._count_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {
            "id": self.config["id"],
            "hash_key": self.config["hash_key"],
            "block_size": BLOCK_SIZE,
            "volumes": self.volumes.url.split("://", 1)[0],
        }

    def close(self) -> None:
        self.volumes.close()

    # -- leases ----------------------------------------------------------------
    def _load_leases(self) -> None:
        """The leases a previous run of the gateway granted (monotonic clocks do not
        survive a restart: the file holds wall-clock expiries)."""
        try:
            doc = json.loads(self.state.get(LEASES))
        except NotFound:
            return
        except ValueError:
            raise CorruptionError(
                f"{self.root / 'state' / LEASES} is damaged",
                "delete it once no sync is running (the senders take their leases again)",
            ) from None
        now_w, now_m = time.time(), time.monotonic()
        for host, e in doc.get("leases", {}).items():
            left = min(float(e["expires"]) - now_w, LEASE_TTL)
            if left > 0:
                self._leases[host] = (str(e["token"]), now_m + left, e.get("owner"))
                self._saved[host] = float(e["expires"])

    def _save_leases(self) -> None:
        """Persist every live lease (caller holds the lock); atomic: a new file is renamed
        over the old one and flushed."""
        now_w, now_m = time.time(), time.monotonic()
        doc: dict[str, Any] = {"leases": {}}
        saved: dict[str, float] = {}
        for host, (token, expiry, owner) in self._leases.items():
            if expiry > now_m:
                saved[host] = now_w + (expiry - now_m)
                doc["leases"][host] = {"token": token, "expires": saved[host], "owner": owner}
        self.state.put(LEASES, json.dumps(doc).encode())
        self.state.flush()
        self._saved = saved

    def lease(
        self,
        host: str,
        token: str,
        owner: dict[str, Any] | None = None,
        takeover: str | None = None,
    ) -> None:
        """Take or renew the host's lease for `token` (one sync per host). A sender whose
        holder died on its own machine (it checks the pid) takes over by naming the dead
        holder's token in `takeover`."""
        check_host_name(host)
        now = time.monotonic()
        with self._lock:
            cur = self._leases.get(host)
            if cur is not None and cur[0] != token and cur[1] > now and cur[0] != takeover:
                held = cur[2] or {}
                raise LeaseHeld(
                    f"a sync of host {host} is already running on the gateway "
                    f"(pid {held.get('pid')} on {held.get('hostname')})",
                    f"wait for it to finish; a dead sync's lease expires within {LEASE_TTL:.0f} s",
                    holder={"token": cur[0], "owner": held},
                )
            keep = owner if owner is not None else (cur[2] if cur and cur[0] == token else None)
            self._leases[host] = (token, now + LEASE_TTL, keep)
            changed = cur is None or cur[0] != token or cur[2] != keep
            if changed or self._saved.get(host, 0.0) < time.time() + LEASE_TTL / 2:
                self._save_leases()

    def release(self, host: str, token: str) -> None:
        with self._lock:
            cur = self._leases.get(host)
            if cur is not None and cur[0] == token:
                del self._leases[host]
                self._save_leases()

    def _leased(self, host: str) -> bool:
        cur = self._leases.get(host)
        return cur is not None and cur[1] > time.monotonic()

    # -- volumes' state ----------------------------------------------------------
    def _vol_state(self, name: str, host: str, size: int | None) -> VolState:
        with self._lock:
            vs = self._vols.get(name)
            if vs is not None:
                return vs
            try:
                raw = json.loads(self.state.get(f"vols/{name}.json"))
            except NotFound:
                raw = None
            existed = name in self.volumes.names()
            vol = self.volumes.open(name, size)
            if raw is None:
                vs = VolState(name, host, vol, None, None, DiskIndex(vol.size), set(), {}, False)
                vs.unknown_all = existed
                self._save_vol(vs)
            else:
                base = self._index(raw["base_index"]) if raw["base_index"] else DiskIndex(vol.size)
                dirty: dict[int, bytes] = {}
                try:
                    data = self.state.get(f"vols/{name}.dirty")
                    for k in range(0, len(data), 40):
                        dirty[int.from_bytes(data[k : k + 8], "little")] = data[k + 8 : k + 40]
                except NotFound:
                    pass
                touched = set(raw["touched"])
                vs = VolState(
                    name,
                    raw.get("host", host),
                    vol,
                    raw["base_snap"],
                    raw["base_index"],
                    base.resized(vol.size) if base.size != vol.size else base,
                    touched,
                    dirty,
                    suspect=bool(touched),
                    # a volume gone, or whose acknowledged writes were lost (a cancelled EBS
                    # pending snapshot): nothing it holds is vouched for
                    unknown_all=bool(raw.get("unknown_all")) or not existed or vol.lost_writes(),
                )
            self._vols[name] = vs
            return vs

    def _vs(self, host: str, sd: dict[str, Any]) -> VolState:
        vs = self._vols.get(sd["volume"])
        return vs if vs is not None else self._vol_state(sd["volume"], host, int(sd["size"]))

    def _save_vol(self, vs: VolState, dirty: dict[int, bytes] | None = None) -> None:
        """Persist the volume's state (and `dirty`, a copy taken before the flush that made
        those blocks durable). Under the volume's lock: a group added by a writer is never
        overwritten by an older list."""
        with vs.lock:
            if dirty is not None:
                data = b"".join(i.to_bytes(8, "little") + cid for i, cid in sorted(dirty.items()))
                self.state.put(f"vols/{vs.name}.dirty", data)
            doc = {
                "host": vs.host,
                "base_snap": vs.base_snap,
                "base_index": vs.base_key,
                "touched": sorted(vs.touched),
                "unknown_all": vs.unknown_all,
            }
            self.state.put(f"vols/{vs.name}.json", json.dumps(doc).encode())
            self.state.flush()

    def _index(self, key: str) -> DiskIndex:
        try:
            return DiskIndex.from_bytes(self.state.get(key), where=key)
        except NotFound:
            raise CorruptionError(f"index {key} is missing from the gateway") from None

    # -- sessions ------------------------------------------------------------------
    def _session(self, host: str) -> dict[str, Any]:
        s = self._sessions.get(host)
        if s is None:
            try:
                s = json.loads(self.state.get(f"sessions/{host}.json"))
            except NotFound:
                s = {"disks": {}, "checkpoint": None, "parent": None}
            self._sessions[host] = s
        return s

    def _save_session(self, host: str) -> None:
        self.state.put(f"sessions/{host}.json", json.dumps(self._session(host)).encode())
        self.state.flush()

    def begin(
        self,
        host: str,
        token: str,
        parent: str | None,
        owner: dict[str, Any] | None = None,
        takeover: str | None = None,
    ) -> dict[str, Any]:
        self.lease(host, token, owner, takeover)
        with self._lock:
            s = self._session(host)
            s["parent"] = parent
            self._save_session(host)
            latest = self.latest(host)
            return {
                "checkpoint": s.get("checkpoint"),
                "latest": json.loads(latest.to_bytes()) if latest else None,
            }

    def open_disk(
        self, host: str, token: str, no: int, name: str, size: int, resume: bool = True
    ) -> dict[str, Any]:
        """Open the disk's volume for the sync; `resume` False: the sender starts the disk
        over, so the counters of an abandoned session do not count for this point."""
        self.lease(host, token)
        if size <= 0:
            raise BadBlock(f"disk {no} ({name}) of host {host}: size {size} is not positive")
        vname = volume_name(host, name)
        with self._lock:
            s = self._session(host)
            for k in [k for k, d in s["disks"].items() if d["volume"] == vname and int(k) != no]:
                del s["disks"][k]  # an abandoned session numbered the disks otherwise
            vs = self._vol_state(vname, host, size)
            if vs.vol.size != size:
                old = vs.vol.size
                vs.vol.resize(size)
                vs.base = vs.base.resized(size)
                keep = min(block_count(old), block_count(size))
                for i in [i for i in vs.dirty if i >= keep]:
                    del vs.dirty[i]  # cut off (a grown disk reads zeros there again)
                for i in {block_count(old) - 1, block_count(size) - 1}:
                    if 0 <= i < block_count(size):
                        vs.dirty[i] = UNKNOWN_ID  # a short last block changed length
                self._save_vol(vs, vs.dirty.copy())
            prev = s["disks"].get(str(no))
            if prev is None or prev["volume"] != vname or prev["size"] != size or not resume:
                s["disks"][str(no)] = {
                    "name": name,
                    "size": size,
                    "volume": vname,
                    "wire": 0,
                    "written": 0,
                    "blocks": 0,
                }
                self._save_session(host)
        return {"volume": vname, "blocks": block_count(size)}

    def put_blocks(self, host: str, token: str, body: bytes) -> int:
        """Verify every block of a batch, then write them in place; returns bytes written
        (0 for a block the volume had: a retried or resumed send). A bad block refuses
        the whole batch before anything of it is written."""
        self.lease(host, token)
        s = self._session(host)
        checked = [self._check_block(host, s, frame) for frame in split_batch(body)]
        written = 0
        for sd, i, cid, plain, wire in checked:
            written += self._write_block(host, sd, i, cid, plain, wire)
        return written

    def _check_block(
        self, host: str, s: dict[str, Any], frame: memoryview
    ) -> tuple[dict[str, Any], int, bytes, bytes, int]:
        disk, i, cid, env = unpack_block(frame)
        sd = s["disks"].get(str(disk))
        if sd is None:
            raise UnknownError(
                f"host {host} has no disk {disk} in its open sync",
                "open the disk (POST …/disks/N) before sending its blocks",
            )
        size = int(sd["size"])
        n = block_count(size)
        where = f"block {i} of disk {disk} ({sd['name']}) of host {host}"
        if i >= n:
            raise BadBlock(f"{where} is past the end of the disk ({n} blocks of {size} bytes)")
        if len(env) < CHUNK_HEADER.size:
            raise CorruptionError(f"{where}: envelope truncated")
        raw_len = CHUNK_HEADER.unpack_from(env)[5]
        if raw_len != block_span(i, size):
            raise BadBlock(
                f"{where} is {raw_len} bytes; the disk's block there is {block_span(i, size)}"
            )
        plain = self.codec.decode(cid, env, where=where)  # CRC, decompress, keyed hash
        return sd, i, cid, plain, len(env)

    def _write_block(
        self, host: str, sd: dict[str, Any], i: int, cid: bytes, plain: bytes, wire: int
    ) -> int:
        vs = self._vs(host, sd)
        with vs.block_lock(i):
            if vs.dirty.get(i) == cid:
                written = 0  # a retried or resumed send: already in place
            else:
                g = i // GROUP
                if g not in vs.touched:
                    with vs.lock:
                        if g not in vs.touched:
                            vs.touched.add(g)
                            self._save_vol(vs)  # before the write: a crash leaves it suspect
                vs.dirty[i] = UNKNOWN_ID
                vs.vol.write(i * BLOCK_SIZE, plain)
                vs.dirty[i] = cid
                written = len(plain)
        with self._count_lock:
            sd["wire"] += wire
            sd["written"] += written
            sd["blocks"] += 1
        return written

    def put_session_blob(self, host: str, token: str, name: str, data: bytes) -> None:
        self.lease(host, token)
        if not re.match(r"^[A-Za-z0-9._-]+$", name):
            raise BadBlock(f"bad session object name {name!r}")
        self.state.put(f"sessions/{host}/{name}", data)

    def get_session_blob(self, host: str, name: str) -> bytes:
        try:
            return self.state.get(f"sessions/{host}/{name}")
        except NotFound:
            raise UnknownError(f"host {host} has no checkpoint object {name}") from None

    def checkpoint(self, host: str, token: str, state: dict[str, Any]) -> None:
        """Flush every volume of the sync, then record what it holds, then the client's state."""
        self.lease(host, token)
        with self._lock:
            s = self._session(host)
            vols = [self._vs(host, d) for d in s["disks"].values()]
            copies = [(vs, vs.dirty.copy()) for vs in vols]  # before the flush makes them true
            for vs in vols:
                vs.vol.flush()
            for vs, dirty in copies:
                self._save_vol(vs, dirty)
            s["checkpoint"] = state
            self._save_session(host)

    # -- commit ---------------------------------------------------------------------
    def _sources(self, vs: VolState, host: str, parent: str | None, disk: str) -> list[Any]:
        """(snapshot, index) pairs a block may be copied back from."""
        out = []
        if vs.base_snap is not None and vs.base_snap in {x.name for x in vs.vol.snapshots()}:
            out.append((vs.base_snap, vs.base))
        if parent and parent != vs.base_snap:
            try:
                p = self.point(host, parent)
            except UnknownError:
                p = None
            for d in p.disks if p else []:
                if d.name == disk and d.index_key:
                    out.append((p.id, self._index(d.index_key)))  # type: ignore[union-attr]
        return out

    def _plan(
        self, vs: VolState, want: DiskIndex, sources: list[Any]
    ) -> tuple[list[int], list[tuple[int, str]], list[int]]:
        """(blocks to zero, (block, snapshot) to copy back, blocks missing)."""
        zero, copy, missing = [], [], []
        for i in range(want.count):
            w = want[i]
            if vs.have(i) == w:
                continue
            if w == ZERO_ID:
                zero.append(i)
                continue
            src = next((snap for snap, idx in sources if i < idx.count and idx[i] == w), None)
            if src is None:
                missing.append(i)
            else:
                copy.append((i, src))
        return zero, copy, missing

    def _staged(self, host: str, no: int, size: int) -> DiskIndex:
        try:
            raw = self.state.get(f"sessions/{host}/index-{no}")
        except NotFound:
            raise UnknownError(f"host {host}: no index uploaded for disk {no}") from None
        idx = DiskIndex(size, ids=bytearray(raw)) if len(raw) == block_count(size) * 32 else None
        if idx is None:
            raise BadBlock(f"host {host}: the index of disk {no} does not match its size")
        return idx

    def missing(self, host: str, token: str) -> dict[int, list[int]]:
        """Blocks of the uploaded indexes that the gateway neither holds nor can copy back."""
        self.lease(host, token)
        s = self._session(host)
        out: dict[int, list[int]] = {}
        for k, sd in s["disks"].items():
            vs = self._vs(host, sd)
            want = self._staged(host, int(k), int(sd["size"]))
            _, _, miss = self._plan(vs, want, self._sources(vs, host, s["parent"], sd["name"]))
            if miss:
                out[int(k)] = miss
        return out

    def commit(self, host: str, token: str, point: RestorePoint) -> RestorePoint:
        self.lease(host, token)
        if point.host != host:
            raise BadBlock(f"point {point.id} is of host {point.host}, not {host}")
        with self._lock:
            try:  # a retried commit whose first answer was lost
                return RestorePoint.from_bytes(self.state.get(point_key(point.host, point.id)))
            except NotFound:
                pass
            s = self._session(host)
            for d in point.disks:
                sd = s["disks"].get(str(d.index))
                if sd is None or sd["name"] != d.name or int(sd["size"]) != d.size:
                    raise UnknownError(f"host {host}: disk {d.index} ({d.name}) was not opened")
                vs = self._vs(host, sd)
                key = index_key(point.id, d.index)
                if vs.base_snap != point.id:  # a retried commit did this disk already
                    want = self._staged(host, d.index, d.size)
                    zero, copy, miss = self._plan(
                        vs, want, self._sources(vs, host, point.parent, d.name)
                    )
                    if miss:
                        raise Missing(
                            f"host {host} disk {d.index} ({d.name}): {len(miss)} blocks of the "
                            f"point were never received (first: {miss[0]})",
                            "run the sync again; it sends them",
                        )
                    self._apply(vs, zero, copy)
                    vs.vol.flush()
                    self.state.put(key, want.to_bytes())
                    self.state.flush()
                    vs.vol.snapshot(point.id)
                    vs.base_snap, vs.base_key, vs.base = point.id, key, want
                    vs.dirty, vs.touched, vs.suspect, vs.unknown_all = {}, set(), False, False
                    self._save_vol(vs, vs.dirty.copy())
                d.index_key = key
                d.index_blake3 = self._index(key).digest()  # a swapped index is refused
                d.stored_bytes = int(sd["wire"])
                d.written_bytes = int(sd["written"])
            self.state.put(point_key(point.host, point.id), point.to_bytes())  # the commit
            self.state.flush()
            for info in list(self.state.list(f"sessions/{host}/")):
                self.state.delete(info.key)
            self.state.delete(f"sessions/{host}.json")
            self._sessions.pop(host, None)
            return point

    def _apply(self, vs: VolState, zero: list[int], copy: list[tuple[int, str]]) -> None:
        size = vs.vol.size
        for i in zero:
            with vs.block_lock(i):
                vs.dirty[i] = UNKNOWN_ID
                vs.vol.write_zeroes(i * BLOCK_SIZE, block_span(i, size))
                vs.dirty[i] = ZERO_ID
        for i, snap in copy:
            data = vs.vol.read_snapshot(snap, i * BLOCK_SIZE, block_span(i, size))
            with vs.block_lock(i):
                vs.dirty[i] = UNKNOWN_ID
                vs.vol.write(i * BLOCK_SIZE, data)
                vs.dirty[i] = self.codec.chunk_id(data)

    # -- points ---------------------------------------------------------------------
    def hosts(self) -> list[str]:
        return sorted({info.key.split("/")[1] for info in self.state.list("points/")})

    def points(self, host: str | None = None) -> list[RestorePoint]:
        prefix = f"points/{check_host_name(host)}/" if host else "points/"
        out = []
        for info in self.state.list(prefix):
            if info.key.endswith(".json"):
                try:
                    out.append(RestorePoint.from_bytes(self.state.get(info.key)))
                except NotFound:
                    continue
        return sorted(out, key=lambda p: (p.host, p.id))

    def latest(self, host: str) -> RestorePoint | None:
        pts = self.points(host)
        return pts[-1] if pts else None

    def point(self, host: str, ref: str) -> RestorePoint:
        check_host_name(host)
        if ref == "latest":
            p = self.latest(host)
            if p is None:
                raise UnknownError(f"host {host!r} has no restore points on the gateway")
            return p
        try:
            return RestorePoint.from_bytes(self.state.get(point_key(host, ref)))
        except NotFound:
            pass
        matches = [p for p in self.points(host) if p.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        raise UnknownError(
            f"host {host!r} has no restore point {ref!r} on the gateway"
            + (" (ambiguous prefix)" if matches else "")
        )

    def update_point(self, point: RestorePoint) -> None:
        old = self.point(point.host, point.id)
        if [d.index_key for d in old.disks] != [d.index_key for d in point.disks]:
            raise BadBlock(f"point {point.id}: an update may not change its disks")
        self.state.put(point_key(point.host, point.id), point.to_bytes())
        self.state.flush()

    def _checked(self, p: RestorePoint, d: Any) -> DiskIndex:
        idx = self._index(d.index_key)
        if d.index_blake3 is not None and idx.digest() != d.index_blake3:
            raise CorruptionError(
                f"{p.host} point {p.id} disk {d.index}: index {d.index_key} is not the one "
                "the point was committed with"
            )
        if idx.size != d.size:
            raise CorruptionError(f"{p.host} point {p.id} disk {d.index}: index size mismatch")
        return idx

    def index(self, host: str, point: str, disk: int) -> bytes:
        p = self.point(host, point)
        return self._checked(p, self._disk(p, disk)).to_bytes()

    @staticmethod
    def _disk(p: RestorePoint, disk: int) -> Any:
        for d in p.disks:
            if d.index == disk:
                return d
        raise UnknownError(f"point {p.id} of host {p.host} has no disk {disk}")

    def _volume_of(self, p: RestorePoint, disk: int) -> Volume:
        d = self._disk(p, disk)
        name = volume_name(p.host, d.name)
        with self._lock:
            vs = self._vols.get(name)
            if vs is not None:
                return vs.vol
            try:
                return self.volumes.open(name)
            except VolumeError:
                raise CorruptionError(
                    f"{p.host} point {p.id} disk {disk}: volume {name} is missing"
                ) from None

    def read(self, host: str, point: str, disk: int, i: int) -> bytes:
        p = self.point(host, point)
        d = self._disk(p, disk)
        if not 0 <= i < block_count(d.size):
            raise BadBlock(f"block {i} is past the end of disk {disk} of point {p.id}")
        vol = self._volume_of(p, disk)
        try:
            return vol.read_snapshot(p.id, i * BLOCK_SIZE, block_span(i, d.size))
        except VolumeError as exc:
            raise CorruptionError(f"{host} point {p.id} disk {disk}: {exc}") from None

    def direct(self, host: str, point: str, disk: int) -> dict[str, Any] | None:
        p = self.point(host, point)
        return self._volume_of(p, disk).direct_source(p.id)

    # -- maintenance ----------------------------------------------------------------------
    def forget(self, host: str, ids: list[str]) -> None:
        """Remove these points' records (retention decided); their snapshots and indexes go
        at the next gc. A protected point stays; the base of a running sync is refused."""
        with self._lock:
            s = self._session(host) if self._leased(host) else {"parent": None}
            for pid in ids:
                if pid == s.get("parent"):
                    raise LockedError(
                        f"point {pid} of host {host} is the base of a running sync",
                        "forget it after the sync",
                    )
            for pid in ids:
                try:
                    p = self.point(host, pid)
                except UnknownError:
                    continue
                if not p.protected:  # protected after retention decided: it stays
                    self.state.delete(point_key(p.host, p.id))
            self.state.flush()

    def gc(self, dry_run: bool = False) -> GCReport:
        """Delete snapshots no point names (a commit killed between its snapshot and its
        record), volumes no point or open sync needs, and unreferenced indexes. Hosts with
        a running sync are left alone (counted as `young`)."""
        rep = GCReport(dry_run=dry_run)
        with self._lock:
            pts = self.points()
            leased = {h for h in {*self.hosts(), *self._leases} if self._leased(h)}
            wanted: dict[str, set[str]] = {}
            for p in pts:
                for d in p.disks:
                    wanted.setdefault(volume_name(p.host, d.name), set()).add(p.id)
            open_vols = set()
            for info in self.state.list("sessions/"):
                if info.key.count("/") == 1 and info.key.endswith(".json"):
                    for d in json.loads(self.state.get(info.key))["disks"].values():
                        open_vols.add(d["volume"])
            owners: dict[str, str] = {}
            bases: set[str] = set()
            for info in self.state.list("vols/"):
                if info.key.endswith(".json"):
                    doc = json.loads(self.state.get(info.key))
                    owners[info.key[len("vols/") : -len(".json")]] = doc.get("host", "")
                    if doc.get("base_index"):
                        bases.add(doc["base_index"])
            for name in self.volumes.names():
                rep.chunks += 1
                if owners.get(name, name.split("--", 1)[0]) in leased:
                    rep.young += 1
                    continue
                if name not in wanted and name not in open_vols:
                    rep.deleted += 1
                    if not dry_run:
                        self._vols.pop(name, None)
                        self.volumes.delete(name)
                        self.state.delete(f"vols/{name}.json")
                        self.state.delete(f"vols/{name}.dirty")
                    continue
                vol = self.volumes.open(name)
                for snap in vol.snapshots():
                    if snap.name in wanted.get(name, set()):
                        rep.referenced += 1
                    else:
                        rep.deleted += 1
                        if not dry_run:
                            vol.delete_snapshot(snap.name)
            keep = {d.index_key for p in pts for d in p.disks} | bases
            for info in list(self.state.list("indexes/")):
                point = info.key.split("/")[1]
                if info.key not in keep and not any(
                    point == p.id and p.host in leased for p in pts
                ):
                    rep.indexes_deleted += 1
                    if not dry_run:
                        self.state.delete(info.key)
            self.state.flush()
        return rep

    def protect(self, host: str, ref: str, on: bool) -> RestorePoint:
        with self._lock:
            p = self.point(host, ref)
            p.protected = on
            self.state.put(point_key(p.host, p.id), p.to_bytes())
            self.state.flush()
            return p

    def verify(self, host: str | None, deep: bool, sample: float) -> VerifyReport:
        rep = VerifyReport()
        for p in self.points(host):
            rep.points += 1
            for d in p.disks:
                try:
                    idx = self._checked(p, d)
                    vol = self._volume_of(p, d.index)
                    snaps = {s.name: s for s in vol.snapshots()}
                except CorruptionError as exc:
                    rep.problems.append(Problem(p.host, p.id, d.index, None, str(exc)))
                    continue
                if p.id not in snaps:
                    rep.problems.append(
                        Problem(p.host, p.id, d.index, None, f"snapshot missing on {vol.name}")
                    )
                    continue
                blocks = [i for i, _ in idx.nonzero()] if not deep else list(range(idx.count))
                rep.chunks_referenced += len(blocks)
                if sample < 100.0:
                    blocks = random.sample(blocks, int(len(blocks) * sample / 100.0 + 0.999))
                for i in blocks:
                    rep.chunks_checked += 1
                    data = vol.read_snapshot(p.id, i * BLOCK_SIZE, block_span(i, d.size))
                    if self.codec.chunk_id(data) != idx[i] and not (
                        idx[i] == ZERO_ID and data == bytes(len(data))
                    ):
                        rep.problems.append(
                            Problem(
                                p.host,
                                p.id,
                                d.index,
                                i * BLOCK_SIZE,
                                f"snapshot content does not match its recorded hash ({vol.name})",
                            )
                        )
        return rep

    def volumes_report(self) -> Iterator[dict[str, Any]]:
        """Every volume with its snapshots and the bytes the points' syncs wrote into it
        (decompressed) and carried to it (on the wire): the console lists them."""
        per: dict[str, dict[str, tuple[int, int]]] = {}
        for p in self.points():
            for d in p.disks:
                per.setdefault(volume_name(p.host, d.name), {})[p.id] = (
                    int(d.written_bytes or 0),
                    int(d.stored_bytes or 0),
                )
        for name in self.volumes.names():
            vol = self.volumes.open(name)
            snaps = [s.name for s in vol.snapshots()]
            mine = per.get(name, {})
            yield {
                "volume": name,
                "host": name.split("--", 1)[0],
                "size": vol.size,
                "snapshots": snaps,
                "written_bytes": sum(mine.get(s, (0, 0))[0] for s in snaps),
                "stored_bytes": sum(mine.get(s, (0, 0))[1] for s in snaps),
            }
