"""Copy restore points to a second site: from any target to any target (docs/copy.md).

A point is read through the source's `PointReader` (every block checked against its
hash) and written through the destination's `SyncSession`, exactly like a sync whose
snapshot is the source point. So the destination keeps its own keys: a block is
re-hashed under the destination's hash key and encoded (compressed, encrypted) by it,
and the destination's session does everything a sync does: dedup against its parent,
checkpoints (a killed copy resumes), the gc fence, Object Lock retention at commit, and
the manifest written last. The copy keeps the point's id, time and annotations, and
records where it came from (`copy_of`).

When the destination already holds a copy of an earlier source point (its newest point
is one, by id), only blocks whose source id changed since that point are read: the rest
have the same bytes, so their destination ids are the parent copy's. Otherwise every
allocated block is read; blocks the destination already has (its parent's) cost a read
but no store. After the commit, the blocks written are read back through the
destination's `PointReader`, which checks each against its new id.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..blocks import BLOCK_SIZE, ZERO_BLOCK
from ..chunk import ID_SIZE, ZERO_ID, Codec
from ..errors import CorruptionError, OpenBDRError
from .index import DiskIndex
from .manifest import RestorePoint
from .target import DiskWriter, Mode, PointReader, SyncSession, Target, WriteOptions

log = logging.getLogger(__name__)

#: a copy in progress is checkpointed at least this often (seconds)
CHECKPOINT_EVERY = 10.0


@dataclass
class CopyReport:
    """What a copy run did, per source host."""

    copied: list[str] = field(default_factory=list)
    #: points of the source already at the destination (or older than its newest copy)
    present: int = 0
    blocks_read: int = 0
    chunks_stored: int = 0
    stored_bytes: int = 0
    verified_blocks: int = 0
    #: points that could not be copied, with why (a damaged source point)
    failed: list[str] = field(default_factory=list)


def to_copy(src: Target, dst: Target, host: str, point: str | None = None) -> list[RestorePoint]:
    """The source points of `host` to copy: the one named, or every one newer than the
    newest point at the destination (so a point the destination's own retention forgot
    is not copied again)."""
    have = {p.id for p in dst.points(host)}
    if point is not None:
        p = src.point(host, point)
        return [] if p.id in have else [p]
    newest = dst.latest(host)
    return [
        p
        for p in src.points(host)
        if p.id not in have and (newest is None or p.id > newest.id)
    ]


def copy_host(
    src: Target,
    dst: Target,
    host: str,
    *,
    point: str | None = None,
    compression: Codec | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CopyReport:
    report = CopyReport()
    todo = to_copy(src, dst, host, point)
    report.present = len(src.points(host)) - len(todo) if point is None else (0 if todo else 1)
    for p in todo:
        if p.unreadable:
            report.failed.append(f"{host} point {p.id}: {p.unreadable}")
            continue
        copy_point(src, dst, p, report, compression=compression, progress=progress)
    return report


def copy_point(
    src: Target,
    dst: Target,
    p: RestorePoint,
    report: CopyReport,
    *,
    compression: Codec | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RestorePoint:
    codec = compression if compression is not None else _codec(p.codec)
    with dst.begin(p.host, WriteOptions(compression=codec)) as session:
        ref = _reference(src, session, p.host)
        copier = _Copier(session, report, progress)
        written: dict[int, list[int]] = {}
        writers: list[DiskWriter] = []
        try:
            for d in p.disks:
                reader = src.reader(p, d)
                try:
                    ids = _ids(reader)
                    ref_ids = _ref_ids(src, ref, d.name, d.size) if ids is not None else None
                    same_parent = session.parent is not None and any(
                        x.name == d.name for x in session.parent.disks
                    )
                    mode: Mode = "incremental" if ref_ids is not None and same_parent else "full"
                    w = session.disk(d.index, d.name, d.size, {"copy_of": p.id}, mode)
                    writers.append(w)
                    if mode == "incremental":
                        assert ids is not None and ref_ids is not None
                        blocks = _changed(ids, ref_ids)
                        # blocks whose chunk a scrub found damaged at the destination: again
                        repair = {
                            i
                            for e in session.repair_extents(d.name, d.size)
                            for i in range(e.offset // BLOCK_SIZE, -(-e.end // BLOCK_SIZE))
                        }
                        if repair:
                            blocks = sorted(set(blocks) | repair)
                    else:
                        blocks = list(reader.allocated())
                    written[d.index] = blocks
                    copier.disk(reader, w, blocks, ids)
                finally:
                    reader.close()
        except BaseException:  # stopped or failed: keep what is done for the next run
            try:
                copier.checkpoint(p.id)
            except Exception as exc:
                log.warning("could not save the copy's checkpoint: %s", exc)
            raise
        copier.checkpoint(p.id)
        for no, lost in session.lost().items():  # a destination gc deleted some meanwhile
            w = writers[no]
            w.undo(lost)
            written[no] = sorted(set(written.get(no, [])) | set(lost))
            reader = src.reader(p, p.disks[no])
            try:
                copier.disk(reader, w, lost, _ids(reader))
            finally:
                reader.close()
        why = session.stopped()
        if why:
            raise OpenBDRError(f"copy of {p.host} point {p.id} stopped: {why}", "run it again")
        copy = dataclasses.replace(
            p,
            disks=[dataclasses.replace(d, index_key="", index_blake3=None) for d in p.disks],
            protected=False,
            damaged=[],
            locked_until=None,
            chunks_locked_until=None,
            copy_of={
                "repository": src.url,
                "point": p.id,
                "copied": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        for rec, w in zip(copy.disks, writers, strict=True):
            rec.stored_bytes = w.record.stored_bytes
            rec.new_chunks = w.record.new_chunks
        committed = session.commit(copy)
    report.verified_blocks += _verify(dst, committed, written)
    report.copied.append(p.id)
    log.info("copied %s point %s to %s", p.host, p.id, dst.url)
    return committed


class _Copier:
    """Reads blocks from a source reader and puts them through a destination writer,
    several at once, checkpointing as it goes."""

    def __init__(
        self,
        session: SyncSession,
        report: CopyReport,
        progress: Callable[[str, int, int], None] | None,
    ) -> None:
        self.session = session
        self.report = report
        self.progress = progress
        self.last = time.monotonic()
        self.point = ""

    def checkpoint(self, point: str) -> None:
        self.session.checkpoint({"copy_of": point})
        self.last = time.monotonic()

    def disk(
        self, reader: PointReader, w: DiskWriter, blocks: Iterable[int], ids: DiskIndex | None
    ) -> None:
        point = reader.point.id
        todo = []
        for i in blocks:
            if w.is_done(i):
                continue
            if ids is not None and ids[i] == ZERO_ID:
                w.done(i, ZERO_ID)  # zero in the source point now
            else:
                todo.append(i)
        n = len(todo)
        with ThreadPoolExecutor(max(1, reader.in_flight), thread_name_prefix="copy") as pool:
            pending: set[Future[tuple[int, bytes]]] = set()
            for k, (i, data) in enumerate(reader.read_blocks(todo)):
                self.report.blocks_read += 1
                pending.add(pool.submit(self._put, w, i, data))
                if len(pending) >= 2 * reader.in_flight:
                    pending = self._settle(w, pending)
                if time.monotonic() - self.last > CHECKPOINT_EVERY:
                    while pending:
                        pending = self._settle(w, pending)
                    self.checkpoint(point)
                if self.progress:
                    self.progress(w.record.name, k + 1, n)
            while pending:
                pending = self._settle(w, pending)

    def _put(self, w: DiskWriter, i: int, data: bytes) -> tuple[int, bytes]:
        if data == ZERO_BLOCK[: len(data)]:
            return i, ZERO_ID
        view = memoryview(data)
        cid = self.session.chunk_id(view)
        kind, cost = w.put(i, view, cid)
        if kind == "stored":
            self.report.chunks_stored += 1
            self.report.stored_bytes += cost
            w.record.stored_bytes += cost
            w.record.new_chunks += 1
        return i, cid

    @staticmethod
    def _settle(
        w: DiskWriter, pending: set[Future[tuple[int, bytes]]]
    ) -> set[Future[tuple[int, bytes]]]:
        finished, rest = wait(pending, return_when=FIRST_COMPLETED)
        for f in finished:
            i, cid = f.result()
            w.done(i, cid)
        return rest


def _codec(name: str) -> Codec:
    try:
        return Codec.parse(name)
    except Exception:
        return Codec.NONE


def _ids(reader: PointReader) -> DiskIndex | None:
    """The source's id of every block when the reader has them (object mode)."""
    index = getattr(reader, "index", None)
    return index if isinstance(index, DiskIndex) else None


def _changed(ids: DiskIndex, ref: DiskIndex) -> list[int]:
    """Blocks whose id differs between two indexes of the same disk size."""
    a, b, n = memoryview(ids.ids), memoryview(ref.ids), ID_SIZE
    return [i for i in range(ids.count) if a[i * n : (i + 1) * n] != b[i * n : (i + 1) * n]]


def _reference(src: Target, session: SyncSession, host: str) -> RestorePoint | None:
    """The source point of which the destination's parent is a copy (same id), if any."""
    parent = session.parent
    if parent is None or parent.copy_of is None:
        return None
    try:
        return src.point(host, parent.id)
    except OpenBDRError:
        return None  # forgotten at the source since: read every block


def _ref_ids(src: Target, ref: RestorePoint | None, name: str, size: int) -> DiskIndex | None:
    if ref is None:
        return None
    match = [d for d in ref.disks if d.name == name]
    if not match:
        return None
    try:
        reader = src.reader(ref, match[0])
    except CorruptionError:
        return None
    try:
        ids = _ids(reader)
        return ids.resized(size) if ids is not None else None
    finally:
        reader.close()


def _verify(dst: Target, point: RestorePoint, written: dict[int, list[int]]) -> int:
    """Read back what this copy wrote through the destination's reader (each block is
    checked against its id there); `CorruptionError` if anything does not read back."""
    n = 0
    for d in point.disks:
        blocks = written.get(d.index, [])
        if not blocks:
            continue
        reader = dst.reader(point, d)
        try:
            for _ in reader.read_blocks(blocks):
                n += 1
        finally:
            reader.close()
    return n
