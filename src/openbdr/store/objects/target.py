"""Object mode behind the target contract: restore points as chunks, indexes and manifests.

A disk writer stores a block as a chunk object unless the repository already holds that
content for this disk (same id at the same position in the parent, any id of the parent
for disks up to 256 GiB, or any id stored in this run); chunks a scrub found damaged are
always stored again. Progress (each disk's index and a done-bitmap) is checkpointed in
the repository after a flush, so a killed sync resumes from any machine that reaches it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import Any

import blake3

from ...blocks import BLOCK_SIZE, ZERO_BLOCK, block_count, block_span
from ...chunk import ZERO_ID, ChunkCodec
from ...errors import CorruptionError
from ...extents import Extent
from ...throttle import TokenBucket
from ..blobs import LockedObject, NotFound
from ..index import DiskIndex
from ..limited import LimitedBlobs
from ..manifest import DiskRecord, RestorePoint
from ..target import (
    GCReport,
    Mode,
    PointReader,
    PutKind,
    SyncSession,
    Target,
    TargetKind,
    VerifyReport,
    WriteOptions,
    register_target_kind,
)
from ..writer import IndexedDiskWriter
from . import gc, immutable, scrub
from .gc import maintenance_lease
from .layout import index_key, point_key
from .repository import Repository
from .verify import verify

log = logging.getLogger(__name__)

#: below this many blocks the parent's ids are kept in a set for dedup across positions;
#: above it only the same position is compared (memory stays bounded)
DEDUP_SET_LIMIT = 1 << 18
#: ids stored in this run kept for dedup across positions; past this the set starts over
#: (a missed dedup only costs an idempotent re-put), so memory does not grow with the disk
STORED_SET_LIMIT = 1 << 16


class ObjectDiskWriter(IndexedDiskWriter):
    def __init__(
        self,
        session: ObjectSession,
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
        self.known: set[bytes] = set()
        if self.prev is not None and self.prev.count <= DEDUP_SET_LIMIT:
            self.known = self.prev.unique_ids() - session.bad_ids

    def put(self, i: int, block: memoryview, cid: bytes) -> tuple[PutKind, int]:
        s = self.session
        if cid in s.stored or (
            cid not in s.bad_ids
            and ((self.prev is not None and self.prev[i] == cid) or cid in self.known)
        ):
            return "known", 0
        enc = s.codec.encode(block, cid)
        s.repo.put_chunk(enc)
        if len(s.stored) >= STORED_SET_LIMIT:
            s.stored.clear()
        s.stored.add(cid)
        return "stored", len(enc.data)


class ObjectSession(SyncSession):
    def __init__(self, repo: Repository, host: str, options: WriteOptions) -> None:
        self.repo = repo
        self.host = host
        self.options = options
        self.codec: ChunkCodec = repo.codec(options.compression, options.level)
        self.lease = repo.host_lease(host)
        self.stored: set[bytes] = set()
        self.concurrency = repo.blobs.put_concurrency
        self.writers: list[ObjectDiskWriter] = []
        self.latest = None
        self.parent = None
        self.bad_ids: set[bytes] = set()
        self._ckpt: dict[str, Any] | None = None

    def __enter__(self) -> ObjectSession:
        self.lease.__enter__()
        try:
            if self.options.bwlimit > 0:
                bucket = TokenBucket(self.options.bwlimit)
                self.repo = self.repo.wrapped(lambda blobs: LimitedBlobs(blobs, bucket))
            self.latest = self.repo.latest(self.host)
            self.parent = None if self.options.full else self.latest
            #: chunks a scrub marked bad in the latest point: never reused, always re-put
            self.bad_ids = scrub.damaged_ids(self.latest)
            self._ckpt = self.repo.load_checkpoint(self.host)
        except BaseException:
            self.lease.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.lease.__exit__(*exc)

    def chunk_id(self, block: memoryview) -> bytes:
        return self.codec.chunk_id(block)

    def disk(
        self, no: int, name: str, size: int, fingerprint: dict[str, Any], mode: Mode
    ) -> ObjectDiskWriter:
        prev = None
        why = None
        if self.parent is not None:
            match = [d for d in self.parent.disks if d.name == name]
            if match:
                try:
                    prev = self.repo.checked_index(self.parent, match[0])
                except CorruptionError as exc:  # the rest of the point is still good
                    why = f"the previous point's index is damaged ({exc.what}): full pass"
                    log.warning("%s: %s", name, why)
                    mode = "full"
        resume = self._resume(no, size, fingerprint, mode)
        if resume is not None:
            log.info("%s: resuming from checkpoint", name)
        elif self._ckpt:
            self._adopt_known(no)
        w = ObjectDiskWriter(self, no, name, size, fingerprint, mode, prev, resume)
        w.record.fallback_reason = why
        self.writers.append(w)
        return w

    def repair_extents(self, name: str, size: int) -> list[Extent]:
        return scrub.damaged_extents(self.parent, name, size)

    def _resume(
        self, no: int, size: int, fingerprint: dict[str, Any], mode: str
    ) -> tuple[bytes, bytes] | None:
        ckpt = self._ckpt
        if not ckpt or ckpt.get("parent") != (self.parent.id if self.parent else None):
            return None
        disks = ckpt.get("disks")
        for d in disks if isinstance(disks, list) else []:
            if not isinstance(d, dict):
                continue
            if d.get("no") == no and d.get("fingerprint") == fingerprint and d.get("mode") == mode:
                index = self.repo.get_checkpoint_blob(self.host, f"disk{no}.index")
                done = self.repo.get_checkpoint_blob(self.host, f"disk{no}.done")
                n = block_count(size)
                if (
                    index is not None
                    and done is not None
                    and len(index) == n * 32
                    and len(done) == (n + 7) // 8
                    and d.get("blake3") == _pair_digest(index, done)
                ):
                    return index, done
        return None

    def _adopt_known(self, no: int) -> None:
        """Ids a stale checkpoint names were durable when it was saved: no need to resend
        (unless a scrub found them bad)."""
        index = self.repo.get_checkpoint_blob(self.host, f"disk{no}.index")
        if index:
            self.stored.update(
                cid
                for cid in (index[k : k + 32] for k in range(0, len(index), 32))
                if cid != ZERO_ID and cid not in self.bad_ids
            )

    def checkpoint(self, state: dict[str, Any]) -> None:
        if not self.writers:
            return
        self.repo.blobs.flush()  # the chunks first: the checkpoint names them
        blobs: dict[str, bytes] = {}
        disks = []
        for w in self.writers:
            index, done = bytes(w.index.ids), bytes(w.done_bits)
            blobs[f"disk{w.no}.index"] = index
            blobs[f"disk{w.no}.done"] = done
            disks.append(
                {
                    "no": w.no,
                    "fingerprint": w.fingerprint,
                    "mode": w.mode,
                    "blake3": _pair_digest(index, done),
                }
            )
        record = dict(
            state,
            parent=self.parent.id if self.parent else None,
            disks=disks,
            saved=datetime.now(UTC).isoformat(),
        )
        self.repo.save_checkpoint(self.host, record, blobs)

    def lost(self) -> dict[int, list[int]]:
        """Chunks a concurrent gc deleted after this run wrote them (see gc.py's fence)."""
        gone = gc.fence(self.repo, self.lease.acquired)
        if gone is None:  # an intent nobody can read: any chunk may be gone
            self.stored.clear()
            return {w.no: [i for i, _ in w.index.nonzero()] for w in self.writers}
        if not gone:
            return {}
        self.stored -= gone
        return {w.no: [i for i, cid in w.index.nonzero() if cid in gone] for w in self.writers}

    def stopped(self) -> str | None:
        if self.lease.lost.is_set():
            return f"lost the lease of host {self.host} (another process took it over)"
        return None

    def commit(self, point: RestorePoint) -> RestorePoint:
        until = self._lock(point)
        for w, rec in zip(self.writers, point.disks, strict=True):
            rec.index_key = index_key(point.id, w.no)
            rec.index_blake3 = w.index.digest()
            self.repo.put_index(rec.index_key, w.index, until)
        self.repo.commit(point)
        self.repo.drop_checkpoint(self.host)
        return point


    def _lock(self, point: RestorePoint) -> datetime | None:
        """Object Lock: every chunk the point names retained long enough (immutable.py),
        before its indexes and manifest are written retained until `locked_until`."""
        lock = self.repo.lock
        if lock is None:
            return None
        self.repo.blobs.flush()
        now = datetime.now(UTC)
        referenced: set[bytes] = set()
        parent_ids: set[bytes] = set()
        for w in self.writers:
            referenced |= w.index.unique_ids()
            if w.prev is not None:
                parent_ids |= w.prev.unique_ids()
        referenced.discard(ZERO_ID)
        bound = immutable.chunk_bound(
            self.repo.blobs, lock, now, referenced, self.parent, parent_ids
        )
        immutable.retain_config(self.repo.blobs, lock, now + timedelta(seconds=2 * lock.seconds))
        until = now + timedelta(seconds=lock.seconds)
        point.locked_until = immutable.iso(until)
        point.chunks_locked_until = immutable.iso(bound)
        return until


class ObjectPointReader(PointReader):
    """A point's disk from the repository: index, then chunks decoded and re-hashed."""

    def __init__(self, repo: Repository, point: RestorePoint, disk: DiskRecord) -> None:
        self.repo = repo
        self.point = point
        self.disk = disk
        self.size = disk.size
        self.index = repo.checked_index(point, disk)
        self.codec = repo.codec()
        self.in_flight = repo.blobs.concurrency

    def allocated(self) -> Iterator[int]:
        return (i for i, _ in self.index.nonzero())

    def read_block(self, i: int) -> bytes:
        cid = self.index[i]
        if cid == ZERO_ID:
            return ZERO_BLOCK[: block_span(i, self.size)]
        where = (
            f"point {self.point.id} disk {self.disk.index} ({self.disk.name}) block {i} "
            f"(offset {i * BLOCK_SIZE})"
        )
        try:
            raw = self.repo.get_chunk(cid)
        except CorruptionError:
            raise CorruptionError(f"{where}: chunk {cid.hex()} is missing") from None
        return self.codec.decode(cid, raw, where=where)

    def read_blocks(
        self, blocks: Iterable[int], in_flight: int | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """Fetch-and-decode in a pool: object stores answer one GET at a time, so many
        requests in flight are what makes an S3 restore fast."""
        it = iter(blocks)
        in_flight = in_flight or self.in_flight
        with ThreadPoolExecutor(in_flight, thread_name_prefix="read") as pool:
            pending: dict[Future[bytes], int] = {}
            try:
                for i in it:
                    pending[pool.submit(self.read_block, i)] = i
                    if len(pending) >= in_flight * 2:
                        yield from self._drain(pending)
                while pending:
                    yield from self._drain(pending)
            finally:
                for f in pending:
                    f.cancel()

    @staticmethod
    def _drain(pending: dict[Future[bytes], int]) -> Iterator[tuple[int, bytes]]:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for f in finished:
            i = pending.pop(f)
            yield i, f.result()


def _pair_digest(index: bytes, done: bytes) -> str:
    """What ties a disk's index and done bitmap to the state that names them: the three are
    separate objects, so a run killed between them could leave a newer index beside an
    older bitmap (blocks marked done that the index records as zero); a resume takes the
    pair only when both are the ones this state was saved with."""
    h = blake3.blake3(index)
    h.update(done)
    return h.hexdigest()


class ObjectTarget(Target):
    """An object repository (directory or S3) as a target."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.url = repo.url
        self.meta = repo.blobs  # sealed in an encrypted repository

    def begin(self, host: str, options: WriteOptions) -> ObjectSession:
        return ObjectSession(self.repo, host, options)

    def hosts(self) -> list[str]:
        return self.repo.hosts()

    def points(self, host: str | None = None) -> list[RestorePoint]:
        return self.repo.points(host)

    def latest(self, host: str) -> RestorePoint | None:
        return self.repo.latest(host)

    def point(self, host: str, ref: str) -> RestorePoint:
        return self.repo.point(host, ref)

    def update_point(self, point: RestorePoint) -> None:
        self.repo.update_point(point)

    def protect(self, host: str, ref: str, on: bool) -> RestorePoint:
        with maintenance_lease(self.repo):  # not while retention decides
            p = self.repo.point(host, ref)
            p.protected = on
            self.repo.update_point(p)
        return p

    def reader(self, point: RestorePoint, disk: DiskRecord) -> ObjectPointReader:
        return ObjectPointReader(self.repo, point, disk)

    def forget(self, points: list[RestorePoint]) -> None:
        """The manifest goes first (the point stops existing), then its indexes; chunks are
        left to gc. Under the maintenance lease, so that gc never marks half a point."""
        if not points:
            return
        refused: list[str] = []
        with maintenance_lease(self.repo):
            for p in points:
                if p.unreadable:
                    continue  # kept for repair: retention never decides on what it cannot read
                key = point_key(p.host, p.id)
                try:
                    current = RestorePoint.from_bytes(self.repo.blobs.get(key))
                except NotFound:
                    continue
                if current.protected:
                    continue  # protected since retention decided
                until = immutable.locked(current)
                if until is not None:
                    log.warning(
                        "%s point %s is immutable until %s (Object Lock): not forgotten",
                        p.host, p.id, immutable.iso(until),
                    )
                    continue
                try:
                    self.repo.blobs.delete(key)
                    self.repo.blobs.flush()
                    for disk in p.disks:
                        self.repo.blobs.delete(disk.index_key)
                except LockedObject as exc:
                    refused.append(f"{p.host} point {p.id}: {exc.what}")
            self.repo.blobs.flush()
        if refused:
            raise LockedObject(
                f"{len(refused)} point(s) could not be removed; first: {refused[0]}",
                "a locked object is kept until its date; forget and gc need the maintenance "
                "credentials, and root for an immutable directory (docs/security.md)",
            )

    def verify(
        self,
        host: str | None = None,
        *,
        deep: bool = False,
        sample: float = 100.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> VerifyReport:
        return verify(self.repo, host=host, deep=deep, sample=sample, progress=progress)

    def gc(self, *, margin: float | None = None, dry_run: bool = False) -> GCReport:
        return gc.gc(
            self.repo, margin=gc.DEFAULT_MARGIN if margin is None else margin, dry_run=dry_run
        )

    def close(self) -> None:
        self.repo.close()


def _open(url: str, *, passphrase: str | None = None) -> ObjectTarget:
    return ObjectTarget(Repository.open(url, passphrase=passphrase))


def _init(
    url: str,
    *,
    passphrase: str | None = None,
    encrypt: bool = False,
    object_lock: immutable.ObjectLock | None = None,
) -> ObjectTarget:
    return ObjectTarget(
        Repository.init(url, encrypt=encrypt, passphrase=passphrase, object_lock=object_lock)
    )


register_target_kind(TargetKind(("", "file", "s3", "memory"), _open, _init))
