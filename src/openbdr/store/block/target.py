"""Block mode behind the target contract: `gateway://HOST:PORT` (store/target.py).

The sending side of a sync: each block the pipeline puts travels to the gateway, in the
session's codec, unless the parent point held the same bytes at the same place (the
volume has them in place already: "known"). Nothing else is sent for unchanged or zero
blocks: at commit the gateway gets the disk's index (one keyed hash per block) and makes
the volume match it before it takes the snapshot. Checkpoints live on the gateway with the
blocks they name, so a sync resumes from any machine. A point reader reads the snapshot
through the gateway and checks every block against its recorded hash; where QEMU can read
the snapshot itself (RBD), `direct_source` says how, and a drill boots without a copy.
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import quote

from ...blocks import block_count, block_span
from ...chunk import ZERO_ID, ChunkCodec
from ...errors import CorruptionError, LockedError
from ...throttle import TokenBucket
from ..blobs import BlobInfo, Blobs, NotFound
from ..index import DiskIndex
from ..manifest import DiskRecord, RestorePoint
from ..objects.lease import _boot_id, _pid_alive, _pid_start
from ..target import (
    DiskWriter,
    GCReport,
    Mode,
    PointReader,
    Problem,
    PutKind,
    SyncSession,
    Target,
    TargetKind,
    VerifyReport,
    WriteOptions,
    register_target_kind,
)
from ..writer import IndexedDiskWriter
from .client import GatewayAuthError, GatewayClient, GatewayError
from .wire import API, BATCH_BYTES, BATCH_FRAMES, frame_parts

__all__ = ["BlockTarget"]


class GatewayBlobs(Blobs):
    """The target's `meta` objects, kept by the gateway."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.url = client.url + "/meta"

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.client.call("PUT", f"{API}/meta/{key}", bytes(data))

    def _cas(self, key: str, expected: bytes | None, data: bytes) -> bool:
        body = {
            "data": base64.b64encode(data).decode(),
            "expected": None if expected is None else base64.b64encode(expected).decode(),
        }
        return bool(self.client.call("POST", f"{API}/meta-cas/{key}", body)["ok"])

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._cas(key, None, data)

    def replace_if(self, key: str, expected: bytes, data: bytes) -> bool:
        return self._cas(key, expected, data)

    def get(self, key: str) -> bytes:
        try:
            return bytes(self.client.call("GET", f"{API}/meta/{key}", raw=True))
        except GatewayAuthError:
            raise
        except GatewayError as exc:
            raise NotFound(f"{key} not found on {self.client.url}") from exc

    def exists(self, key: str) -> bool:
        try:
            self.get(key)
            return True
        except NotFound:
            return False

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        for d in self.client.call("GET", f"{API}/meta?prefix={prefix}"):
            yield BlobInfo(d["key"], int(d["size"]), float(d["mtime"]))

    def delete(self, key: str) -> None:
        self.client.call("DELETE", f"{API}/meta/{key}")


class BlockDiskWriter(IndexedDiskWriter):
    def __init__(
        self,
        session: BlockSession,
        no: int,
        name: str,
        size: int,
        fingerprint: dict[str, Any],
        mode: Mode,
        prev: DiskIndex | None,
        resume: tuple[bytes, bytes] | None,
    ) -> None:
        super().__init__(no, name, size, fingerprint, mode, prev, resume)
        self.session = session

    def put(self, i: int, block: memoryview, cid: bytes) -> tuple[PutKind, int]:
        if self.prev is not None and i < self.prev.count and self.prev[i] == cid:
            return "known", 0  # the volume holds it in place (the gateway checks at commit)
        s = self.session
        enc = s.codec.encode(block, cid)
        if s.bucket is not None:
            s.bucket.take(len(enc.data))
        s.stream.add(frame_parts(self.no, i, cid, enc.data))
        return "stored", len(enc.data)


class _BlockStream:
    """Blocks on their way to the gateway: batched (`wire.BATCH_BYTES`), sent by a few
    threads of their own, each on its own connection.

    `put` returns once its block is in a batch, so the pipeline's workers never wait for a
    round trip; `flush` returns once every block added before it is written at the
    gateway. A checkpoint, `lost` and the commit flush first: no done-bit or index names a
    block that is not at the gateway. A failed batch fails the next `add` or `flush` (the
    sync stops; its blocks are resent from the last checkpoint, and writes are
    idempotent)."""

    STREAMS = 4

    def __init__(self, session: BlockSession) -> None:
        self.session = session
        self._cv = threading.Condition()
        self._parts: list[bytes] = []
        self._frames = 0
        self._bytes = 0
        #: batches taken and not yet answered (a taken batch counts before it is queued)
        self._pending = 0
        self._error: BaseException | None = None
        self._closed = False
        self._queue: queue.Queue[list[bytes]] = queue.Queue(maxsize=self.STREAMS)
        self._threads = [
            threading.Thread(target=self._run, name=f"gateway-send-{k}", daemon=True)
            for k in range(self.STREAMS)
        ]
        for t in self._threads:
            t.start()

    def add(self, parts: tuple[bytes, bytes]) -> None:
        self._raise()
        with self._cv:
            self._parts += parts
            self._frames += 1
            self._bytes += len(parts[0]) + len(parts[1])
            full = self._bytes >= BATCH_BYTES or self._frames >= BATCH_FRAMES
            batch = self._take() if full else None
        if batch:
            self._queue.put(batch)  # blocks while every stream is busy: back-pressure

    def _take(self) -> list[bytes]:
        """The open batch, counted as pending (caller holds the lock)."""
        batch, self._parts, self._frames, self._bytes = self._parts, [], 0, 0
        self._pending += 1
        return batch

    def _run(self) -> None:
        while not self._closed:
            try:
                batch = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if self._error is None and not self._closed:
                    self.session.call("PUT", "blocks", b"".join(batch))
            except BaseException as exc:  # handed to the pipeline by add() or flush()
                with self._cv:
                    self._error = self._error or exc
            finally:
                with self._cv:
                    self._pending -= 1
                    self._cv.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        with self._cv:
            batch = self._take() if self._parts else None
        if batch:
            self._queue.put(batch)
        with self._cv:
            self._cv.wait_for(lambda: self._pending == 0)
        self._raise()

    def close(self) -> None:
        self._closed = True


class BlockSession(SyncSession):
    HEARTBEAT = 15.0

    def __init__(self, target: BlockTarget, host: str, options: WriteOptions) -> None:
        self.target = target
        self.client = target.client
        self.host = host
        self.options = options
        self.lease = uuid.uuid4().hex
        self.latest = target.latest(host)
        self.parent = None if options.full else self.latest
        self.codec = ChunkCodec(target.hash_key, options.compression, options.level)
        self.bucket = TokenBucket(options.bwlimit) if options.bwlimit > 0 else None
        got = self._begin()
        self.stream = _BlockStream(self)
        self.ckpt: dict[str, Any] | None = got.get("checkpoint")
        named = (self.ckpt or {}).get("resume")
        #: the checkpoint slot the gateway's checkpoint names (the next one goes in the other)
        self._slot = named["slot"] if isinstance(named, dict) and named.get("slot") in (0, 1) else 0
        self.writers: dict[int, BlockDiskWriter] = {}
        self._stopped: str | None = None
        self._halt = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="gateway-lease", daemon=True)
        self._beat.start()

    def _begin(self) -> dict[str, Any]:
        """Take the host's lease; a holder that died on this machine is taken over (as the
        object repository's lease does)."""
        pid = os.getpid()
        owner = {
            "hostname": socket.gethostname(),
            "boot_id": _boot_id(),
            "pid": pid,
            "pid_start": _pid_start(pid),
        }
        body = {"parent": self.parent.id if self.parent else None, "owner": owner}
        try:
            return dict(self.call("POST", "begin", body))
        except LockedError as exc:
            holder = getattr(exc, "detail", {}).get("holder") or {}
            held = holder.get("owner") or {}
            same = held.get("hostname") == owner["hostname"] and held.get("boot_id") == _boot_id()
            if not same or _pid_alive(int(held.get("pid") or 0), str(held.get("pid_start"))):
                raise
            return dict(self.call("POST", "begin", dict(body, takeover=holder.get("token"))))

    def call(self, method: str, what: str, body: Any = None, raw: bool = False) -> Any:
        path = f"{API}/sync/{self.host}/{what}"
        return self.client.call(method, path, body, lease=self.lease, raw=raw)

    def _heartbeat(self) -> None:
        while not self._halt.wait(self.HEARTBEAT):
            try:
                self.call("POST", "renew", {})
            except LockedError as exc:
                self._stopped = str(exc)
                return
            except GatewayError:
                continue

    def chunk_id(self, block: memoryview) -> bytes:
        return self.codec.chunk_id(block)

    def disk(
        self, no: int, name: str, size: int, fingerprint: dict[str, Any], mode: Mode
    ) -> DiskWriter:
        prev = None
        if self.parent is not None:
            for d in self.parent.disks:
                if d.name == name:
                    prev = self.target.index(self.parent, d)
        resume = None
        ck = self.ckpt
        if ck and ck.get("parent") == (self.parent.id if self.parent else None):
            for d in ck.get("disks", []):
                if d["no"] == no and d["fingerprint"] == fingerprint and d["mode"] == mode:
                    resume = self._resume(no, size, ck.get("resume"))
        self.call("POST", "disk", {"no": no, "name": name, "size": size, "resume": bool(resume)})
        w = BlockDiskWriter(self, no, name, size, fingerprint, mode, prev, resume)
        self.writers[no] = w
        return w

    def _resume(self, no: int, size: int, named: Any) -> tuple[bytes, bytes] | None:
        """The disk's (index, done bitmap) of the gateway's checkpoint: from the one object
        that checkpoint names (its slot and id), else None (the disk starts over)."""
        if not isinstance(named, dict) or named.get("slot") not in (0, 1):
            return None
        try:
            data = self.call("GET", f"blob/disk{no}.ckpt{named['slot']}", raw=True)
        except GatewayError:
            return None
        return unpack_resume(bytes(data), str(named.get("id")), block_count(size))

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Each disk's index and done bitmap go in one object (replaced atomically), into the
        slot the gateway's current checkpoint does not name, tagged with a new id that the
        checkpoint's state then names: a sender killed anywhere in here leaves the previous
        checkpoint whole, and a resume never pairs a done bitmap with another run's index."""
        self.stream.flush()
        ck_id = uuid.uuid4().hex
        slot = 1 - self._slot
        disks = []
        for no, w in self.writers.items():
            self.call("PUT", f"blob/disk{no}.ckpt{slot}", pack_resume(ck_id, w.index, w.done_bits))
            disks.append({"no": no, "fingerprint": w.fingerprint, "mode": w.mode})
        parent = self.parent.id if self.parent else None
        resume = {"slot": slot, "id": ck_id}
        self.call(
            "POST", "checkpoint", {"state": dict(state, parent=parent, disks=disks, resume=resume)}
        )
        self._slot = slot

    def _stage(self) -> None:
        self.stream.flush()
        for no, w in self.writers.items():
            self.call("PUT", f"blob/index-{no}", bytes(w.index.ids))

    def lost(self) -> dict[int, list[int]]:
        self._stage()
        got = self.call("POST", "missing", {})
        return {int(k): list(v) for k, v in got.items()}

    def stopped(self) -> str | None:
        return self._stopped

    def commit(self, point: RestorePoint) -> RestorePoint:
        self._stage()
        got = self.call("POST", "commit", point.to_bytes())
        return RestorePoint.from_bytes(_dumps(got))

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.stream.close()
        with contextlib.suppress(GatewayError):  # else the lease expires by itself
            self.call("POST", "end", {})


_CKPT = struct.Struct("<4s16sQ")  # magic, checkpoint id, blocks; then done bitmap, index
_CKPT_MAGIC = b"OBCK"


def pack_resume(ck_id: str, index: DiskIndex, done: bytearray) -> bytes:
    """A disk's checkpoint object: the done bitmap and the index of the same instant."""
    return _CKPT.pack(_CKPT_MAGIC, bytes.fromhex(ck_id), index.count) + bytes(done) + index.ids


def unpack_resume(data: bytes, ck_id: str, n: int) -> tuple[bytes, bytes] | None:
    """(index, done) if `data` is the checkpoint `ck_id` of a disk of `n` blocks, else None."""
    if len(data) != _CKPT.size + (n + 7) // 8 + n * 32:
        return None
    magic, got, count = _CKPT.unpack_from(data)
    if magic != _CKPT_MAGIC or got.hex() != ck_id or count != n:
        return None
    done = data[_CKPT.size : _CKPT.size + (n + 7) // 8]
    return data[_CKPT.size + len(done) :], done


def _dumps(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode()


class BlockPointReader(PointReader):
    def __init__(self, target: BlockTarget, point: RestorePoint, disk: DiskRecord) -> None:
        self.target = target
        self.point = point
        self.disk = disk
        self.size = disk.size
        self.index = target.index(point, disk)
        self.codec = ChunkCodec(target.hash_key)
        self._path = f"{API}/read/{point.host}/{point.id}/{disk.index}"

    def allocated(self) -> Iterator[int]:
        for i, _ in self.index.nonzero():
            yield i

    def read_block(self, i: int) -> bytes:
        span = block_span(i, self.size)
        want = self.index[i]
        if want == ZERO_ID:
            return bytes(span)
        data = self.target.client.call("GET", f"{self._path}/{i}", raw=True)
        if len(data) != span or self.codec.chunk_id(data) != want:
            raise CorruptionError(
                f"{self.point.host} point {self.point.id} disk {self.disk.index} block {i}: "
                "the snapshot's content does not match its recorded hash",
                "run `openbdr verify`; sync the host again to write a good point",
            )
        return bytes(data)

    def read_blocks(
        self, blocks: Iterable[int], in_flight: int | None = None
    ) -> Iterator[tuple[int, bytes]]:
        in_flight = in_flight or self.in_flight
        with ThreadPoolExecutor(max(1, min(in_flight, 8))) as pool:
            pending: set[Future[tuple[int, bytes]]] = set()
            for i in blocks:
                pending.add(pool.submit(lambda b: (b, self.read_block(b)), i))
                if len(pending) >= in_flight:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            for f in pending:
                yield f.result()

    def direct_source(self) -> dict[str, Any] | None:
        path = f"{API}/direct/{self.point.host}/{self.point.id}/{self.disk.index}"
        src = self.target.client.call("GET", path)["source"]
        return dict(src) if src else None


class BlockTarget(Target):
    def __init__(self, url: str, token: str | None = None, **_: Any) -> None:
        self.client = GatewayClient(url, token)
        info = self.client.call("GET", f"{API}/info")
        self.info = info
        self.hash_key = bytes.fromhex(info["hash_key"])
        self.url = url  # with its query: a helper process (drill FUSE) reopens it by URL
        self.meta = GatewayBlobs(self.client)

    def begin(self, host: str, options: WriteOptions) -> SyncSession:
        return BlockSession(self, host, options)

    def hosts(self) -> list[str]:
        return list(self.client.call("GET", f"{API}/hosts"))

    def points(self, host: str | None = None) -> list[RestorePoint]:
        q = f"?host={host}" if host else ""
        return [
            RestorePoint.from_bytes(_dumps(p)) for p in self.client.call("GET", f"{API}/points{q}")
        ]

    def latest(self, host: str) -> RestorePoint | None:
        pts = self.points(host)
        return pts[-1] if pts else None

    def point(self, host: str, ref: str) -> RestorePoint:
        host, ref = quote(host, safe=""), quote(ref, safe="")
        return RestorePoint.from_bytes(
            _dumps(self.client.call("GET", f"{API}/points/{host}/{ref}"))
        )

    def update_point(self, point: RestorePoint) -> None:
        self.client.call("PUT", f"{API}/points/{point.host}/{point.id}", point.to_bytes())

    def index(self, point: RestorePoint, disk: DiskRecord) -> DiskIndex:
        raw = self.client.call("GET", f"{API}/index/{point.host}/{point.id}/{disk.index}", raw=True)
        where = f"{point.host} point {point.id} disk {disk.index}"
        index = DiskIndex.from_bytes(raw, where=where)
        if disk.index_blake3 is not None and index.digest() != disk.index_blake3:
            raise CorruptionError(f"{where}: the gateway's index is not the one committed")
        return index

    def reader(self, point: RestorePoint, disk: DiskRecord) -> PointReader:
        return BlockPointReader(self, point, disk)

    def forget(self, points: list[RestorePoint]) -> None:
        by_host: dict[str, list[str]] = {}
        for p in points:
            by_host.setdefault(p.host, []).append(p.id)
        for host, ids in by_host.items():
            self.client.call("POST", f"{API}/forget/{host}", {"points": ids})

    def verify(
        self,
        host: str | None = None,
        *,
        deep: bool = False,
        sample: float = 100.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> VerifyReport:
        got = self.client.call(
            "POST", f"{API}/verify", {"host": host, "deep": deep, "sample": sample}
        )
        rep = VerifyReport(
            points=got["points"],
            chunks_referenced=got["chunks_referenced"],
            chunks_checked=got["chunks_checked"],
            problems=[Problem(**p) for p in got["problems"]],
        )
        if progress is not None:
            progress(rep.chunks_checked, rep.chunks_referenced)
        return rep

    def gc(self, *, margin: float | None = None, dry_run: bool = False) -> GCReport:
        """Snapshots and volumes no point names (the gateway leaves hosts with a running
        sync alone, so no margin is needed); `chunks` counts volumes, `referenced` the
        snapshots kept."""
        return GCReport(**self.client.call("POST", f"{API}/gc", {"dry_run": dry_run}))

    def protect(self, host: str, ref: str, on: bool) -> RestorePoint:
        got = self.client.call("POST", f"{API}/protect/{host}/{ref}", {"on": on})
        return RestorePoint.from_bytes(_dumps(got))

    def volumes(self) -> list[dict[str, Any]]:
        """Every volume of the gateway with its snapshots (for the console)."""
        return list(self.client.call("GET", f"{API}/volumes"))

    def close(self) -> None:
        self.client.close()


register_target_kind(TargetKind(("gateway",), BlockTarget, BlockTarget))
