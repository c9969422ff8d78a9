"""The sync pipeline: from a source snapshot to a committed restore point.

One reader (the calling thread) walks the snapshot's extents block by block into a
bounded pool of 1 MiB buffers; worker threads zero-check, hash with the target's keyed
hash and hand each block to the target's disk writer, which decides what it costs (known
content, a chunk stored, a block sent to a gateway). BLAKE3, zstd, lz4, pread and the
stores all release the GIL, so the pipeline uses every core without per-4 KiB Python.

This module knows the source and target contracts only (`capture.base`,
`store.target`): progress is checkpointed through the session, which a killed sync run
again resumes from, and the point exists once the session commits it.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .blocks import BLOCK_SIZE, ZERO_BLOCK, block_span, is_zero
from .capture.base import ChangeToken, DiskSnapshot, Host, Snapshot
from .chunk import ZERO_ID, Codec
from .errors import LockedError, OpenBDRError, SourceError
from .extents import Extent, normalize, to_blocks, total
from .store.manifest import RestorePoint, new_point_id
from .store.target import DiskWriter, Mode, PointReader, SyncSession, Target, WriteOptions

log = logging.getLogger(__name__)


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


Pieces = list[tuple[int, int]]


def _block_pieces(extents: Iterable[Extent], size: int) -> Iterator[tuple[int, Pieces]]:
    """(block, [(offset, length) …]) for every block the extents touch, in order."""
    cur = -1
    pieces: Pieces = []
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


def _merged_pieces(
    read: Iterable[Extent], zero: Iterable[Extent], size: int
) -> Iterator[tuple[int, Pieces, Pieces]]:
    """(block, pieces to read, pieces known zero) for every block either list touches."""
    a, b = _block_pieces(read, size), _block_pieces(zero, size)
    na, nb = next(a, None), next(b, None)
    while na is not None or nb is not None:
        if nb is None or (na is not None and na[0] < nb[0]):
            assert na is not None
            yield na[0], na[1], []
            na = next(a, None)
        elif na is None or nb[0] < na[0]:
            yield nb[0], [], nb[1]
            nb = next(b, None)
        else:
            yield na[0], na[1], nb[1]
            na, nb = next(a, None), next(b, None)


class _ParentAhead:
    """The parent point's blocks under an incremental's partly changed blocks, read on
    threads ahead of the reader thread, which takes them in the same order: read one at
    a time there, each was a wait (a chunk read and its hash check) between source reads."""

    def __init__(self, reader: PointReader, blocks: list[int]) -> None:
        self.reader = reader
        self.blocks = blocks
        self.threads = max(4, reader.in_flight)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="parent")
        self.ahead: deque[tuple[int, Future[bytes]]] = deque()
        self.next = 0

    def get(self, i: int) -> bytes:
        while self.ahead and self.ahead[0][0] < i:  # planned, but not asked for after all
            self.ahead.popleft()[1].cancel()
        if not self.ahead:  # skip the plan forward to `i`
            while self.next < len(self.blocks) and self.blocks[self.next] < i:
                self.next += 1
        while self.next < len(self.blocks) and len(self.ahead) < 2 * self.threads:
            b = self.blocks[self.next]
            self.ahead.append((b, self.pool.submit(self.reader.read_block, b)))
            self.next += 1
        if self.ahead and self.ahead[0][0] == i:
            return self.ahead.popleft()[1].result()
        return self.reader.read_block(i)

    def close(self) -> None:
        for _, fut in self.ahead:
            fut.cancel()
        self.pool.shutdown(wait=True)


class _DiskSync:
    """Moves one disk's listed blocks to the target through its disk writer."""

    def __init__(self, run: SyncRun, no: int, disk: DiskSnapshot, writer: DiskWriter) -> None:
        self.run = run
        self.no = no
        self.disk = disk
        self.writer = writer
        self.size = disk.size
        self.record = writer.record
        reasons = [writer.record.fallback_reason, disk.fallback_reason]
        self.record.fallback_reason = "; ".join(r for r in reasons if r) or None
        self.zeros: list[Extent] = []
        self._parent: PointReader | None = None
        self._parent_checked = False
        self._ahead: _ParentAhead | None = None

    @property
    def mode(self) -> Mode:
        return self.writer.mode

    # -- worker side (threads) -------------------------------------------------
    def _work(
        self, i: int, buf: bytearray, view: memoryview
    ) -> tuple[int, bytes, int, str, bytearray]:
        if is_zero(view):
            return i, ZERO_ID, 0, "zero", buf
        cid = self.run.session.chunk_id(view)
        kind, stored = self.writer.put(i, view, cid)
        return i, cid, stored, kind, buf

    # -- reader side (calling thread) -------------------------------------------
    def _parent_reader(self) -> PointReader | None:
        """The parent point's copy of this disk, opened once (None: it has none)."""
        if not self._parent_checked:
            self._parent_checked = True
            parent = self.run.session.parent
            match = [d for d in parent.disks if d.name == self.disk.name] if parent else []
            if match:
                self._parent = self.run.target.reader(parent, match[0])  # type: ignore[arg-type]
        return self._parent

    def _needs_parent(self, i: int, pieces: Pieces, zeros: Pieces) -> bool:
        """Whether `_read` fills block `i` from the parent (the rule it applies)."""
        whole = [(i * BLOCK_SIZE, block_span(i, self.size))]
        return self.mode == "incremental" and pieces != whole and zeros != whole

    def _unchanged(self, i: int, buf: memoryview) -> None:
        """An incremental's bytes of block `i` that no extent lists: the parent's."""
        parent = self._parent_reader()
        if parent is None or i * BLOCK_SIZE >= parent.size:
            buf[:] = ZERO_BLOCK[: len(buf)]
            return
        data = self._ahead.get(i) if self._ahead is not None else parent.read_block(i)
        n = min(len(data), len(buf))
        buf[:n] = data[:n]
        buf[n:] = ZERO_BLOCK[: len(buf) - n]

    def _read(self, i: int, pieces: Pieces, zeros: Pieces, buf: bytearray) -> memoryview:
        """Block `i`: in `buf`, or a view of the source's own memory when it holds it."""
        span = block_span(i, self.size)
        base = i * BLOCK_SIZE
        if pieces == [(base, span)]:
            held = self.disk.view(base, span)
            if held is not None:  # no copy: a memcpy costs as much as hashing here
                self.record.read_bytes += span
                return held
        elif self._needs_parent(i, pieces, zeros):
            self._unchanged(i, memoryview(buf)[:span])
            for off, length in zeros:
                buf[off - base : off - base + length] = ZERO_BLOCK[:length]
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
        writer = self.writer
        # C queues and plain threads, not a ThreadPoolExecutor and queue.Queue: a Future
        # and two Python-level Conditions per block were measurable next to the EBS
        # source's 64 request threads (each lock hand-off is a GIL hand-off there)
        todo: queue.SimpleQueue[tuple[int, bytearray, memoryview] | None] = queue.SimpleQueue()
        results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        free = [bytearray(BLOCK_SIZE) for _ in range(run.threads * 2 + 2)]
        in_flight = 0
        parent = self._parent_reader() if self.mode == "incremental" else None
        if parent is not None:
            need = [i for i, pieces, zeros in _merged_pieces(extents, self.zeros, self.size)
                    if self._needs_parent(i, pieces, zeros) and not writer.is_done(i)
                    and i * BLOCK_SIZE < parent.size]
            if self._ahead is not None:
                self._ahead.close()
            self._ahead = _ParentAhead(parent, need) if need else None
            log.info("%s: %d partly changed blocks take the rest from point %s",
                     self.disk.name, len(need), parent.point.id)

        work = self._work

        def worker() -> None:
            while (job := todo.get()) is not None:
                try:
                    results.put(work(*job))
                except BaseException as exc:  # handed to the reader thread
                    results.put(exc)
                del job  # a source's view of its memory must not outlive its block

        def handle(item: Any) -> None:
            nonlocal in_flight
            in_flight -= 1
            if isinstance(item, BaseException):
                raise item
            i, cid, stored, kind, buf = item
            free.append(buf)
            writer.done(i, cid)
            span = block_span(i, self.size)
            run.done_bytes += span
            rec = self.record
            if kind == "zero":
                rec.zero_bytes += span
            elif kind == "known":
                rec.reused_blocks += 1
                run.reused_bytes += span
            else:
                rec.stored_bytes += stored
                rec.new_chunks += 1

        workers: list[threading.Thread] = []
        try:
            for i, pieces, zeros in _merged_pieces(extents, self.zeros, self.size):
                if writer.is_done(i):
                    run.done_bytes += block_span(i, self.size)
                    continue
                while not free:
                    handle(results.get())
                buf = free.pop()
                data = self._read(i, pieces, zeros, buf)
                # one more worker only while blocks wait for one (as a thread pool grows):
                # idle threads would each keep a compressor and a malloc arena (RSS)
                if len(workers) < run.threads and (not workers or not todo.empty()):
                    workers.append(threading.Thread(target=worker, name=f"sync-{len(workers)}",
                                                    daemon=True))
                    workers[-1].start()
                todo.put((i, buf, data))
                in_flight += 1
                while not results.empty():
                    handle(results.get_nowait())
                run.tick(self)
            while in_flight:
                handle(results.get())
        except BaseException:
            while in_flight:  # let running workers finish before they are stopped
                item = results.get()
                in_flight -= 1
                if not isinstance(item, BaseException):
                    writer.done(item[0], item[1])
            raise
        finally:
            for _ in workers:
                todo.put(None)
            for t in workers:
                t.join()

    def trust_but_verify(self, extents: list[Extent]) -> list[int]:
        """Re-read a few blocks the tracker calls unchanged; return those that differ."""
        if self.mode != "incremental":
            return []
        changed = set(to_blocks([*extents, *self.zeros], self.size))
        candidates = [i for i in self.writer.previous_blocks() if i not in changed]
        # live sources: blocks written since T0, or known changed but not listed yet
        known = self.disk.moved_blocks(candidates)
        candidates = [i for i in candidates if i not in known]
        bad = []
        buf = bytearray(BLOCK_SIZE)
        for i in random.sample(candidates, min(self.disk.trust_sample, len(candidates))):
            span = block_span(i, self.size)
            self.disk.read_into(i * BLOCK_SIZE, memoryview(buf)[:span])
            if self.run.session.chunk_id(memoryview(buf)[:span]) != self.writer.previous(i):
                bad.append(i)
        return [i for i in bad if i not in self.disk.moved_blocks(bad)] if bad else bad

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        if self._parent is not None:
            self._parent.close()


class SyncRun:
    def __init__(
        self,
        target: Target,
        host: Host,
        options: SyncOptions,
        progress: ProgressFn | None = None,
    ) -> None:
        self.target = target
        self.host = host
        self.options = options
        self.progress = progress
        self.session: SyncSession  # set by run()
        self.threads = options.threads
        self.total_bytes = 0
        self.done_bytes = 0
        self.reused_bytes = 0
        self.started = time.monotonic()
        self._last_tick = 0.0
        self._last_ckpt = time.monotonic()
        self.disk_syncs: list[_DiskSync] = []
        self.state: dict[str, Any] = {}
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
        why = self.session.stopped()
        if why is not None:
            raise LockedError(why, "check for a second sync of this host")
        if self.progress and (force or now - self._last_tick >= 0.2):
            self._last_tick = now
            self._report(current.disk.name, self.done_bytes, now)
        if force or now - self._last_ckpt >= self.options.checkpoint_every:
            self.checkpoint()

    def _report(self, disk: str, done: int, now: float) -> None:
        assert self.progress is not None
        recs = [d.record for d in self.disk_syncs]
        self.progress(
            Progress(
                host=self.host.name,
                disk=disk,
                total_bytes=self.total_bytes,
                done_bytes=done,
                read_bytes=sum(r.read_bytes for r in recs),
                stored_bytes=sum(r.stored_bytes for r in recs),
                zero_bytes=sum(r.zero_bytes for r in recs),
                reused_bytes=self.reused_bytes,
                elapsed=now - self.started,
            )
        )

    def checkpoint(self) -> None:
        """Durably record finished blocks (the session flushes what they name first)."""
        self._last_ckpt = time.monotonic()
        if self.disk_syncs:
            self.session.checkpoint(self.state)

    # -- the run ----------------------------------------------------------------------
    def run(self) -> RestorePoint:
        host = self.host
        write = WriteOptions(
            compression=self.options.compression,
            level=self.options.level,
            bwlimit=self.options.bwlimit,
            full=self.options.full,
        )
        with self.target.begin(host.name, write) as session:
            self.session = session
            # a store with a round trip per put (S3) wants more puts in flight than cores
            self.threads = max(self.options.threads, session.concurrency)
            latest, prev = session.latest, session.parent
            since = ChangeToken.from_json(prev.token) if prev else None
            self._phase("prepare")
            with host.snapshot(since) as snap:
                self._phase("snapshot")
                point_id = new_point_id(after=latest.id if latest else None)
                created = datetime.now(UTC).isoformat(timespec="seconds")
                self.state = {"point": point_id}
                plans = [self._plan(no, disk, prev) for no, disk in enumerate(snap.disks)]
                self._phase("plan")
                try:
                    try:
                        for ds, extents in plans:
                            self.disk_syncs.append(ds)
                            ds.sync(extents)
                            self.tick(ds, force=False)
                        self._phase("first pass")
                        self._settle(snap, plans)
                        self._lost(plans)
                        self._phase("gc fence")
                    except BaseException:
                        try:
                            self.checkpoint()
                        except Exception as exc:  # keep the original error
                            log.warning("could not save the checkpoint: %s", exc)
                        raise
                    if self.progress and self.disk_syncs:
                        self._report(self.disk_syncs[-1].disk.name, self.total_bytes,
                                     time.monotonic())
                    for ds, _ in plans:
                        ds.record.layout = ds.disk.layout
                    point = RestorePoint(
                        host=host.name,
                        id=point_id,
                        created=created,
                        consistency=snap.consistency,
                        disks=[ds.record for ds, _ in plans],
                        parent=prev.id if prev else None,
                        token=ChangeToken.to_json(snap_token(snap.disks)),
                        source=host.describe(),
                        codec=self.options.compression.name.lower(),
                        duration_s=round(time.monotonic() - self.started, 3),
                        notes=[str(n) for n in snap.notes],
                    )
                    point = session.commit(point)
                    snap.committed()
                    self._phase("commit")
                finally:
                    for ds, _ in plans:
                        ds.close()
            self._phase("release")
            log.info("sync of %s: %s", host.name, self.phases)
            return point

    def _plan(
        self, no: int, disk: DiskSnapshot, prev: RestorePoint | None
    ) -> tuple[_DiskSync, list[Extent]]:
        """The disk's writer and the extents to read: the source's, and what the target
        needs again; a change tracker caught lying turns the disk into a hash-compare."""
        session = self.session
        has_parent = prev is not None and any(d.name == disk.name for d in prev.disks)
        mode: Mode = (
            ("incremental" if disk.incremental else "hash-compare") if has_parent else "full"
        )
        writer = session.disk(no, disk.name, disk.size, disk.fingerprint(), mode)
        source = normalize(disk.extents())
        extents = normalize([*source, *session.repair_extents(disk.name, disk.size)])
        ds = _DiskSync(self, no, disk, writer)
        if writer.mode == "incremental":
            ds.zeros = normalize(disk.zero_extents())
        elif mode == "incremental":  # the target cannot build on the parent: all of it
            extents = [Extent(0, disk.size)]
        valid = disk.valid_bytes
        ds.record.valid_bytes = int(total(source) if valid is None else valid)
        bad = ds.trust_but_verify(extents)
        if bad:
            log.warning(
                "%s: change tracking missed changes in blocks %s: hash-compare pass",
                disk.name,
                bad,
            )
            writer.reset("hash-compare", "change tracking missed changes")
            ds.zeros = []
            extents = [Extent(0, disk.size)]
        self.total_bytes += sum(
            block_span(i, disk.size) for i in to_blocks([*extents, *ds.zeros], disk.size)
        )
        return ds, extents

    def _settle(self, snap: Snapshot, plans: list[tuple[_DiskSync, list[Extent]]]) -> None:
        """Live sources (the agent) read the first pass while the disk changes; `settle()`
        re-copies what changed meanwhile, last under freeze, and lists it: stored over the
        first pass, it makes the point one instant. Frozen sources have nothing to settle."""
        again = snap.settle()
        if not again:
            return
        self._phase("settle")
        for ds, extents in plans:
            more = again.get(ds.disk.name) or []
            blocks = to_blocks(more, ds.size)
            ds.writer.undo(blocks)
            self.total_bytes += sum(block_span(i, ds.size) for i in blocks)
            if more:
                ds.sync(more)
                extents[:] = normalize([*extents, *more])
        self._phase("staged blocks")

    def _lost(self, plans: list[tuple[_DiskSync, list[Extent]]]) -> None:
        """Put again what the target lost after this run wrote it (a concurrent gc)."""
        self.checkpoint()
        lost = self.session.lost()
        for ds, extents in plans:
            redo = lost.get(ds.no) or []
            if redo:
                ds.writer.undo(redo)
                ds.sync(extents)


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
    target: Target,
    host: Host,
    options: SyncOptions | None = None,
    progress: ProgressFn | None = None,
) -> RestorePoint:
    return SyncRun(target, host, options or SyncOptions(), progress).run()
