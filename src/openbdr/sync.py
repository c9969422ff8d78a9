"""The sync pipeline: from a source snapshot to a committed restore point.

One reader (the calling thread) walks the snapshot's extents block by block into a
bounded pool of 1 MiB buffers; worker threads zero-check, hash (keyed BLAKE3), drop
blocks the repository already holds, compress and put. BLAKE3, zstd, lz4, pread and the
stores all release the GIL, so the pipeline uses every core without per-4 KiB Python.

Progress is checkpointed in the repository (the ids stored so far and a bitmap of
finished blocks), after a flush that makes those chunks durable; a killed sync run again
skips what was finished. The manifest is written last: until then no restore point
exists and earlier points are untouched.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import gc, scrub
from .blocks import BLOCK_SIZE, ZERO_BLOCK, block_count, block_span, is_zero
from .capture.base import ChangeToken, DiskSnapshot, Host
from .chunk import ZERO_ID, ChunkCodec, Codec
from .errors import LockedError, OpenBDRError, SourceError
from .extents import Extent, normalize, to_blocks, total
from .store.index import DiskIndex
from .store.manifest import DiskRecord, RestorePoint, index_key, new_point_id
from .store.repository import Repository
from .throttle import TokenBucket

log = logging.getLogger(__name__)

#: below this many blocks the previous point's ids are kept in a set for dedup across
#: positions; above it only the same position is compared (memory stays bounded)
DEDUP_SET_LIMIT = 1 << 18
#: ids stored in this run kept for dedup across positions; past this the set starts over
#: (a missed dedup only costs an idempotent re-put), so memory does not grow with the disk
STORED_SET_LIMIT = 1 << 16
#: unchanged blocks re-read per disk to check a change tracker's word
TRUST_SAMPLE = 8


@dataclass
class SyncOptions:
    compression: Codec = Codec.NONE
    level: int = 1
    bwlimit: float = 0.0
    #: more threads than cores: a worker waiting on a put or a read leaves a core to another
    threads: int = field(default_factory=lambda: max(4, os.cpu_count() or 2))
    checkpoint_every: float = 10.0
    full: bool = False
    #: polled at every block; True stops the sync cleanly (checkpoint, then `SyncStopped`)
    should_stop: Callable[[], bool] | None = None


class SyncStopped(OpenBDRError):
    """The caller asked the sync to stop (pause, cancel); its checkpoint was saved."""

    exit_code = 5


@dataclass
class Progress:
    host: str
    disk: str
    total_bytes: int
    done_bytes: int
    read_bytes: int
    stored_bytes: int
    zero_bytes: int
    reused_bytes: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.done_bytes / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        rate = self.rate
        return (self.total_bytes - self.done_bytes) / rate if rate > 0 else None


ProgressFn = Callable[[Progress], None]


class _Bitmap:
    def __init__(self, n: int, data: bytes | None = None) -> None:
        self.n = n
        self.bits = bytearray(data) if data is not None else bytearray((n + 7) // 8)

    def __contains__(self, i: int) -> bool:
        return bool(self.bits[i >> 3] & (1 << (i & 7)))

    def add(self, i: int) -> None:
        self.bits[i >> 3] |= 1 << (i & 7)


def _block_pieces(
    extents: Iterable[Extent], size: int
) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """(block, [(offset, length) …]) for every block the extents touch, in order."""
    cur = -1
    pieces: list[tuple[int, int]] = []
    for ext in extents:
        pos, end = ext.offset, min(ext.end, size)
        while pos < end:
            b = pos // BLOCK_SIZE
            stop = min(end, (b + 1) * BLOCK_SIZE)
            if b != cur:
                if pieces:
                    yield cur, pieces
                cur, pieces = b, []
            pieces.append((pos, stop - pos))
            pos = stop
    if pieces:
        yield cur, pieces


class _DiskSync:
    """Moves one disk's listed blocks into the repository and fills its index."""

    def __init__(
        self,
        run: SyncRun,
        no: int,
        disk: DiskSnapshot,
        prev: DiskIndex | None,
        resume: dict[str, Any] | None,
    ) -> None:
        self.run = run
        self.no = no
        self.disk = disk
        self.size = disk.size
        n = block_count(self.size)
        self.prev = prev.resized(self.size) if prev is not None else None
        if disk.incremental and self.prev is not None:
            self.index = self.prev.copy()
            self.mode = "incremental"
        else:
            self.index = DiskIndex(self.size)
            self.mode = "hash-compare" if self.prev is not None else "full"
        self.done = _Bitmap(n)
        if resume is not None:
            self.index = DiskIndex(self.size, ids=bytearray(resume["index"]))
            self.done = _Bitmap(n, resume["done"])
        self.known: set[bytes] = set()
        if self.prev is not None and self.prev.count <= DEDUP_SET_LIMIT:
            self.known = self.prev.unique_ids()
        self.known -= run.bad_ids  # chunks a scrub found bad are written again
        self.record = DiskRecord(
            index=no,
            name=disk.name,
            size=self.size,
            source=str(disk.fingerprint()),
            index_key="",
            block_size=BLOCK_SIZE,
            mode=self.mode,
            fallback_reason=disk.fallback_reason,
        )

    # -- worker side (threads) -------------------------------------------------
    def _work(
        self, i: int, buf: bytearray, view: memoryview
    ) -> tuple[int, bytes, int, str, bytearray]:
        if is_zero(view):
            return i, ZERO_ID, 0, "zero", buf
        codec = self.run.codec
        cid = codec.chunk_id(view)
        if (cid in self.run.stored) or (
            cid not in self.run.bad_ids
            and ((self.prev is not None and self.prev[i] == cid) or cid in self.known)
        ):
            return i, cid, 0, "reused", buf
        enc = codec.encode(view, cid)
        if self.run.bucket is not None:
            self.run.bucket.take(len(enc.data))
        self.run.repo.put_chunk(enc)
        stored = self.run.stored
        if len(stored) >= STORED_SET_LIMIT:
            stored.clear()
        stored.add(cid)
        return i, cid, len(enc.data), "stored", buf

    # -- reader side (calling thread) -------------------------------------------
    def _read(self, i: int, pieces: list[tuple[int, int]], buf: bytearray) -> memoryview:
        """Block `i`: in `buf`, or a view of the source's own memory when it holds it."""
        span = block_span(i, self.size)
        base = i * BLOCK_SIZE
        if pieces == [(base, span)]:
            held = self.disk.view(base, span)
            if held is not None:  # no copy: a memcpy costs as much as hashing here
                self.record.read_bytes += span
                return held
        else:
            buf[:span] = ZERO_BLOCK[:span]  # bytes outside valid extents are stored as zero
        view = memoryview(buf)
        for off, length in pieces:
            try:
                got = self.disk.read_into(off, view[off - base : off - base + length])
            except OSError as exc:
                raise SourceError(
                    f"source {self.disk.name}: read error at offset {off} ({exc.strerror})",
                    "check the device; the sync resumes from its checkpoint when run again",
                ) from None
            if got != length:
                raise SourceError(
                    f"source {self.disk.name}: short read at offset {off} "
                    f"({got} of {length} bytes); did the disk shrink during the sync?",
                    "run the sync again",
                )
        self.record.read_bytes += sum(n for _, n in pieces)
        return view[:span]

    def sync(self, extents: list[Extent]) -> None:
        run = self.run
        self.record.valid_bytes = int(getattr(self.disk, "valid_bytes", total(extents)))
        why = self.disk.fallback_reason  # a source may learn it while listing (valid data)
        if why and why not in (self.record.fallback_reason or ""):
            self.record.fallback_reason = "; ".join(filter(None, [self.record.fallback_reason, why]))
        results: queue.Queue[Any] = queue.Queue()
        free = [bytearray(BLOCK_SIZE) for _ in range(run.options.threads * 2 + 2)]
        in_flight = 0

        def task(i: int, buf: bytearray, data: memoryview) -> None:
            try:
                results.put(self._work(i, buf, data))
            except BaseException as exc:  # handed to the reader thread
                results.put(exc)

        def handle(item: Any) -> None:
            nonlocal in_flight
            in_flight -= 1
            if isinstance(item, BaseException):
                raise item
            i, cid, stored, kind, buf = item
            free.append(buf)
            self.index[i] = cid
            self.done.add(i)
            span = block_span(i, self.size)
            run.done_bytes += span
            rec = self.record
            if kind == "zero":
                rec.zero_bytes += span
            elif kind == "reused":
                rec.reused_blocks += 1
                run.reused_bytes += span
            else:
                rec.stored_bytes += stored
                rec.new_chunks += 1

        with ThreadPoolExecutor(run.options.threads, thread_name_prefix="sync") as pool:
            try:
                for i, pieces in _block_pieces(extents, self.size):
                    if i in self.done:
                        run.done_bytes += block_span(i, self.size)
                        continue
                    while not free:
                        handle(results.get())
                    buf = free.pop()
                    data = self._read(i, pieces, buf)
                    pool.submit(task, i, buf, data)
                    in_flight += 1
                    while not results.empty():
                        handle(results.get_nowait())
                    run.tick(self)
                while in_flight:
                    handle(results.get())
            except BaseException:
                while in_flight:  # let running workers finish before the pool closes
                    item = results.get()
                    in_flight -= 1
                    if not isinstance(item, BaseException):
                        i, cid, _s, _k, _b = item
                        self.index[i] = cid
                        self.done.add(i)
                raise

    def trust_but_verify(self, extents: list[Extent]) -> list[int]:
        """Re-read a few blocks the tracker calls unchanged; return those that differ."""
        if self.prev is None or not self.disk.incremental:
            return []
        changed = set(to_blocks(extents, self.size))
        candidates = [i for i, _ in self.prev.nonzero() if i not in changed]
        # live sources: blocks written since T0, or known changed but not listed yet
        moved = getattr(self.disk, "moved_blocks", None)
        if moved is not None:  # sample only what the source calls unchanged
            known = moved(candidates)
            candidates = [i for i in candidates if i not in known]
        bad = []
        buf = bytearray(BLOCK_SIZE)
        k = int(getattr(self.disk, "trust_sample", TRUST_SAMPLE))  # a source may scale it
        for i in random.sample(candidates, min(k, len(candidates))):
            span = block_span(i, self.size)
            self.disk.read_into(i * BLOCK_SIZE, memoryview(buf)[:span])
            if self.run.codec.chunk_id(memoryview(buf)[:span]) != self.prev[i]:
                bad.append(i)
        return [i for i in bad if i not in moved(bad)] if bad and moved is not None else bad


class SyncRun:
    def __init__(
        self,
        repo: Repository,
        host: Host,
        options: SyncOptions,
        progress: ProgressFn | None = None,
    ) -> None:
        self.repo = repo
        self.host = host
        self.options = options
        self.progress = progress
        self.codec: ChunkCodec = repo.codec(options.compression, options.level)
        self.bucket = TokenBucket(options.bwlimit) if options.bwlimit > 0 else None
        self.stored: set[bytes] = set()
        #: ids a scrub marked bad in the host's latest point: never reused, always re-put
        self.bad_ids: set[bytes] = set()
        self.total_bytes = 0
        self.done_bytes = 0
        self.reused_bytes = 0
        self.started = time.monotonic()
        self._last_tick = 0.0
        self._last_ckpt = time.monotonic()
        self.disk_syncs: list[_DiskSync] = []
        self.state: dict[str, Any] = {}
        self.lease: Any = None
        #: seconds spent per phase (snapshot, first pass, settle, commit…): where the time goes
        self.phases: dict[str, float] = {}
        self._phase_at = self.started

    def _phase(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self._phase_at, 3)
        self._phase_at = now

    # -- periodic work -----------------------------------------------------------
    def tick(self, current: _DiskSync, force: bool = False) -> None:
        now = time.monotonic()
        if self.options.should_stop is not None and self.options.should_stop():
            raise SyncStopped(
                f"the sync of host {self.host.name} was stopped on request",
                "run it again to continue from its checkpoint",
            )
        if self.lease is not None and self.lease.lost.is_set():
            raise LockedError(
                f"lost the lease of host {self.host.name} (another process took it over)",
                "check for a second sync of this host",
            )
        if self.progress and (force or now - self._last_tick >= 0.2):
            self._last_tick = now
            recs = [d.record for d in self.disk_syncs]
            self.progress(
                Progress(
                    host=self.host.name,
                    disk=current.disk.name,
                    total_bytes=self.total_bytes,
                    done_bytes=self.done_bytes,
                    read_bytes=sum(r.read_bytes for r in recs),
                    stored_bytes=sum(r.stored_bytes for r in recs),
                    zero_bytes=sum(r.zero_bytes for r in recs),
                    reused_bytes=self.reused_bytes,
                    elapsed=now - self.started,
                )
            )
        if force or now - self._last_ckpt >= self.options.checkpoint_every:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Durably record finished blocks; chunks are flushed before the state names them."""
        self._last_ckpt = time.monotonic()
        if not self.disk_syncs:
            return
        self.repo.blobs.flush()
        blobs: dict[str, bytes] = {}
        disks = []
        for ds in self.disk_syncs:
            blobs[f"disk{ds.no}.index"] = bytes(ds.index.ids)
            blobs[f"disk{ds.no}.done"] = bytes(ds.done.bits)
            disks.append({"no": ds.no, "fingerprint": ds.disk.fingerprint(), "mode": ds.mode})
        state = dict(self.state, disks=disks, saved=datetime.now(UTC).isoformat())
        self.repo.save_checkpoint(self.host.name, state, blobs)

    def _resume_for(
        self, ckpt: dict[str, Any] | None, no: int, disk: DiskSnapshot, mode: str
    ) -> dict[str, Any] | None:
        if not ckpt or ckpt.get("parent") != self.state.get("parent"):
            return None
        for d in ckpt.get("disks", []):
            if d["no"] == no and d["fingerprint"] == disk.fingerprint() and d["mode"] == mode:
                index = self.repo.get_checkpoint_blob(self.host.name, f"disk{no}.index")
                done = self.repo.get_checkpoint_blob(self.host.name, f"disk{no}.done")
                n = block_count(disk.size)
                if (
                    index is not None
                    and done is not None
                    and len(index) == n * 32
                    and len(done) == (n + 7) // 8
                ):
                    return {"index": index, "done": done}
        return None

    # -- the run ----------------------------------------------------------------------
    def run(self) -> RestorePoint:
        repo, host = self.repo, self.host
        with repo.host_lease(host.name) as lease:
            self.lease = lease
            latest = repo.latest(host.name)
            prev = None if self.options.full else latest
            since = ChangeToken.from_json(prev.token) if prev else None
            ckpt = repo.load_checkpoint(host.name)
            self.bad_ids = scrub.damaged_ids(latest)
            self._phase("prepare")
            with host.snapshot(since) as snap:
                self._phase("snapshot")
                point_id = new_point_id(after=latest.id if latest else None)
                created = datetime.now(UTC).isoformat(timespec="seconds")
                self.state = {"parent": prev.id if prev else None, "point": point_id}
                plans = []
                for no, disk in enumerate(snap.disks):
                    prev_index = None
                    if prev is not None:
                        match = [d for d in prev.disks if d.name == disk.name]
                        if match:
                            prev_index = repo.get_index(match[0].index_key)
                    extents = normalize(
                        [*disk.extents(), *scrub.damaged_extents(prev, disk.name, disk.size)]
                    )
                    ds = _DiskSync(self, no, disk, prev_index, None)
                    resume = self._resume_for(ckpt, no, disk, ds.mode)
                    if resume is not None:
                        ds = _DiskSync(self, no, disk, prev_index, resume)
                        log.info("%s: resuming from checkpoint", disk.name)
                    elif ckpt:
                        self._adopt_known(ckpt, no)
                    bad = ds.trust_but_verify(extents)
                    if bad:
                        log.warning(
                            "%s: change tracking missed changes in blocks %s: hash-compare pass",
                            disk.name,
                            bad,
                        )
                        ds.index = DiskIndex(disk.size)
                        ds.done = _Bitmap(block_count(disk.size))
                        ds.mode = ds.record.mode = "hash-compare"
                        ds.record.fallback_reason = "change tracking missed changes"
                        extents = [Extent(0, disk.size)]
                    plans.append((ds, extents))
                    self.total_bytes += sum(
                        block_span(i, disk.size) for i in to_blocks(extents, disk.size)
                    )
                self.stored -= self.bad_ids  # adopted from a checkpoint, but scrubbed bad
                self._phase("plan")
                try:
                    for ds, extents in plans:
                        self.disk_syncs.append(ds)
                        ds.sync(extents)
                        self.tick(ds, force=False)
                    self._phase("first pass")
                    self._settle(snap, plans)
                    self._gc_fence(plans)
                    self._phase("gc fence")
                except BaseException:
                    try:
                        self.checkpoint()
                    except Exception as exc:  # keep the original error
                        log.warning("could not save the checkpoint: %s", exc)
                    raise
                if self.progress and self.disk_syncs:
                    self.tick(self.disk_syncs[-1], force=False)
                    self._final_progress()
                disks = []
                for ds, _ in plans:
                    key = index_key(point_id, ds.no)
                    repo.put_index(key, ds.index)
                    ds.record.index_key = key
                    layout = getattr(ds.disk, "layout", None)
                    ds.record.layout = layout if isinstance(layout, dict) else None
                    disks.append(ds.record)
                point = RestorePoint(
                    host=host.name,
                    id=point_id,
                    created=created,
                    consistency=snap.consistency,
                    disks=disks,
                    parent=prev.id if prev else None,
                    token=ChangeToken.to_json(snap_token(snap.disks)),
                    source=getattr(host, "describe", lambda: type(host).__name__)(),
                    codec=self.options.compression.name.lower(),
                    duration_s=round(time.monotonic() - self.started, 3),
                )
                repo.commit(point)
                repo.drop_checkpoint(host.name)
                self._phase("commit")
            self._phase("release")
            log.info("sync of %s: %s", host.name, self.phases)
            return point

    def _settle(self, snap: Any, plans: list[tuple[_DiskSync, list[Extent]]]) -> None:
        """Live sources (the agent) read the first pass while the disk changes; `settle()`
        re-copies what changed meanwhile, last under freeze, and lists it: stored over the
        first pass, it makes the point one instant. Sources without it are frozen already."""
        settle = getattr(snap, "settle", None)
        if settle is None:
            return
        again = settle()
        self._phase("settle")
        for ds, extents in plans:
            more = again.get(ds.disk.name) or []
            for i in to_blocks(more, ds.size):
                ds.done.bits[i >> 3] &= ~(1 << (i & 7))
                self.total_bytes += block_span(i, ds.size)  # progress stays within 100 %
            if more:
                ds.sync(more)
                extents[:] = normalize([*extents, *more])
        self._phase("staged blocks")

    def _gc_fence(self, plans: list[tuple[_DiskSync, list[Extent]]]) -> None:
        """Put again what a concurrent gc deleted after this run wrote it (see gc.py)."""
        self.checkpoint()
        lost = gc.fence(self.repo, self.lease.acquired)
        self.stored -= lost
        for ds, extents in plans:
            redo = [i for i, cid in ds.index.nonzero() if cid in lost] if lost else []
            for i in redo:
                ds.done.bits[i >> 3] &= ~(1 << (i & 7))
            if redo:
                ds.sync(extents)

    def _adopt_known(self, ckpt: dict[str, Any], no: int) -> None:
        """Ids a stale checkpoint names were durable when it was saved: no need to resend."""
        index = self.repo.get_checkpoint_blob(self.host.name, f"disk{no}.index")
        if index:
            self.stored.update(
                cid
                for cid in (index[k : k + 32] for k in range(0, len(index), 32))
                if cid != ZERO_ID
            )

    def _final_progress(self) -> None:
        if self.progress and self.disk_syncs:
            recs = [d.record for d in self.disk_syncs]
            self.progress(
                Progress(
                    host=self.host.name,
                    disk=self.disk_syncs[-1].disk.name,
                    total_bytes=self.total_bytes,
                    done_bytes=self.total_bytes,
                    read_bytes=sum(r.read_bytes for r in recs),
                    stored_bytes=sum(r.stored_bytes for r in recs),
                    zero_bytes=sum(r.zero_bytes for r in recs),
                    reused_bytes=self.reused_bytes,
                    elapsed=time.monotonic() - self.started,
                )
            )


def snap_token(disks: list[DiskSnapshot]) -> ChangeToken:
    """One token for the whole snapshot: each disk's own token by name."""
    source = disks[0].token.source if disks else "none"
    return ChangeToken(source, {d.name: d.token.to_json() for d in disks})


def disk_capture(token: dict[str, Any] | None, disk: str) -> dict[str, Any]:
    """What a live source recorded of one disk's capture (passes, bytes read, freeze
    windows) in a point's token, which `snap_token` nests per disk; {} if nothing."""
    tok = ((token or {}).get("value") or {}).get(disk)
    value = tok.get("value") if isinstance(tok, dict) else None
    capture = value.get("capture") if isinstance(value, dict) else None
    return capture if isinstance(capture, dict) else {}


def sync(
    repo: Repository,
    host: Host,
    options: SyncOptions | None = None,
    progress: ProgressFn | None = None,
) -> RestorePoint:
    return SyncRun(repo, host, options or SyncOptions(), progress).run()
