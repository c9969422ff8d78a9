"""The target contract (DESIGN.md §4): where restore points live, whatever the mode.

A sync opens a `SyncSession` for one host (it holds the host's lease until closed). For
each disk of the snapshot the session gives a `DiskWriter`; the pipeline hands it every
block it read, with the block's keyed hash, and the writer decides what that block costs:
nothing (all zero, or content the target already holds for this disk) or a store (a
compressed chunk object, a block written in place through a gateway). The session
checkpoints progress so that a killed sync resumes, and `commit` makes the restore point
exist, after everything it names is durable. A `PointReader` gives any committed point's
disk block by block, every block checked against its recorded hash: restore, verify,
drills and recovery read only through it.

`sync.py` knows this module and nothing of how a target stores; object mode
(`store.objects`) and block mode are two implementations. Both keep, per point and disk,
the keyed hash of every block (an index), which makes hash-compare passes, trust-but-verify
and verification the same for both.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from ..chunk import Codec
from ..errors import OpenBDRError
from ..extents import Extent
from .blobs import Blobs
from .manifest import DiskRecord, RestorePoint

#: where drill reports live in a target's `meta` store: drills/<host>/<drill id>/…
DRILLS = "drills/"

#: full: no earlier point of this disk; incremental: the source lists changes and the
#: rest is the parent's; hash-compare: every valid block read, only differing ones stored
Mode = Literal["full", "incremental", "hash-compare"]
#: what a put cost: nothing (zero, known) or a store of `stored` bytes
PutKind = Literal["zero", "known", "stored"]


@dataclass(frozen=True)
class WriteOptions:
    """How a session stores blocks: chosen per host by its policy, per sync."""

    compression: Codec = Codec.NONE
    level: int = 1
    #: bytes per second sent or stored (0: unlimited)
    bwlimit: float = 0.0
    #: ignore the parent point: every disk is a full pass
    full: bool = False


class DiskWriter(abc.ABC):
    """One disk of a sync session. `put` is called from many threads at once (distinct
    blocks); `done`, `undo` and `reset` only from the pipeline's thread."""

    #: the disk's record in the point; the pipeline adds its counters, the target its own
    record: DiskRecord
    mode: Mode
    size: int

    @abc.abstractmethod
    def previous(self, i: int) -> bytes | None:
        """The parent point's hash of block `i` (None: no parent disk, or past its end)."""

    @abc.abstractmethod
    def previous_blocks(self) -> Iterator[int]:
        """Blocks of the parent disk that are not all zero."""

    @abc.abstractmethod
    def is_done(self, i: int) -> bool:
        """Block `i` is already in this session (a resumed sync skips it)."""

    @abc.abstractmethod
    def put(self, i: int, block: memoryview, cid: bytes) -> tuple[PutKind, int]:
        """Take block `i` (not all zero) with its keyed hash; return what it cost."""

    @abc.abstractmethod
    def done(self, i: int, cid: bytes) -> None:
        """Block `i` now holds `cid` (the zero id for an all-zero block)."""

    @abc.abstractmethod
    def undo(self, blocks: Iterable[int]) -> None:
        """These blocks must be put again (changed again while the capture settled, or lost
        by the target meanwhile)."""

    @abc.abstractmethod
    def reset(self, mode: Mode, reason: str) -> None:
        """Start the disk over (change tracking proved wrong): nothing from the parent."""


class SyncSession(AbstractContextManager["SyncSession"]):
    """A sync of one host in progress; leaving it releases the host's lease."""

    host: str
    #: the newest committed point of the host (also when a full sync ignores it)
    latest: RestorePoint | None
    #: the point the sync builds on (None for a full sync)
    parent: RestorePoint | None
    #: puts in flight this target wants from the pipeline (0: the pipeline's default)
    concurrency: int = 0

    @abc.abstractmethod
    def chunk_id(self, block: memoryview) -> bytes:
        """The target's keyed hash of a block (its identity in indexes)."""

    @abc.abstractmethod
    def disk(
        self, no: int, name: str, size: int, fingerprint: dict[str, Any], mode: Mode
    ) -> DiskWriter:
        """The writer of the snapshot's disk `no` (`name` finds the parent's disk); it
        resumes from this host's checkpoint when that was taken on the same parent for the
        same frozen view (`fingerprint`)."""

    def repair_extents(self, name: str, size: int) -> list[Extent]:
        """Blocks to read again although the source did not change them: the target found
        its copy of them damaged (scrub) and needs the bytes from the source."""
        return []

    @abc.abstractmethod
    def checkpoint(self, state: dict[str, Any]) -> None:
        """Durably record every block done so far (with the pipeline's `state`)."""

    def lost(self) -> dict[int, list[int]]:
        """Called after the last checkpoint, before the commit: blocks per disk number that
        the target lost meanwhile (a concurrent gc) and needs put again."""
        return {}

    @abc.abstractmethod
    def stopped(self) -> str | None:
        """Why the session can no longer commit (its lease was taken over), or None."""

    @abc.abstractmethod
    def commit(self, point: RestorePoint) -> RestorePoint:
        """Make the point exist: every disk's blocks durable, then its record; returns the
        point as stored (disk records filled with where the target keeps them)."""


class PointReader(abc.ABC):
    """A committed point's disk, block by block; bytes are checked against their hash."""

    point: RestorePoint
    disk: DiskRecord
    size: int
    #: reads in flight that keep this target's store busy (a restore's default)
    in_flight: int = 8

    @abc.abstractmethod
    def allocated(self) -> Iterator[int]:
        """Blocks that are not all zero (the rest read as zeros), in order."""

    @abc.abstractmethod
    def read_block(self, i: int) -> bytes:
        """Block `i` (short at the end of an odd-sized disk); `CorruptionError` naming the
        point, disk, block and stored object when it is missing or damaged."""

    def read_blocks(
        self, blocks: Iterable[int], in_flight: int | None = None
    ) -> Iterator[tuple[int, bytes]]:
        """Many blocks with up to `in_flight` reads at once, in completion order."""
        for i in blocks:
            yield i, self.read_block(i)

    def direct_source(self) -> dict[str, Any] | None:
        """A QEMU `-blockdev` spec that reads this disk in place (an RBD snapshot), so a
        drill boots it without a copy; None: read it through `read_block`."""
        return None

    def close(self) -> None:  # noqa: B027 - readers without resources hold nothing
        """Release what the reader holds."""


@dataclass
class Problem:
    """One thing verification found wrong, named as an operator needs it."""

    host: str
    point: str
    disk: int
    offset: int | None
    reason: str

    def __str__(self) -> str:
        from ..blocks import BLOCK_SIZE

        where = f"{self.host} point {self.point} disk {self.disk}"
        if self.offset is not None:
            where += f" block {self.offset // BLOCK_SIZE} (offset {self.offset})"
        return f"{where}: {self.reason}"


@dataclass
class VerifyReport:
    points: int = 0
    chunks_referenced: int = 0
    chunks_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class GCReport:
    """What garbage collection found and reclaimed (objects: chunks, or volume snapshots)."""

    chunks: int = 0
    referenced: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    #: unreferenced, but younger than the safety margin or a running sync: kept this time
    young: int = 0
    indexes_deleted: int = 0
    dry_run: bool = False
    #: unreferenced, but under an Object Lock retention (S3 refused the delete): kept
    locked: int = 0
    #: objects of immutable points found unlocked (a crash between write and lock on a
    #: directory repository) and locked again
    relocked: int = 0
    #: objects whose immutable attribute gc cleared because their date had passed
    unlocked: int = 0


class Target(abc.ABC):
    """Where a host's restore points live: an object repository or a block-mode site."""

    url: str
    #: small metadata objects that belong with the points: drill reports under `DRILLS`
    meta: Blobs

    @abc.abstractmethod
    def begin(self, host: str, options: WriteOptions) -> SyncSession:
        """Open a sync of `host` (takes the host's lease: `LockedError` if held)."""

    @abc.abstractmethod
    def hosts(self) -> list[str]: ...

    @abc.abstractmethod
    def points(self, host: str | None = None) -> list[RestorePoint]:
        """Committed restore points, oldest first."""

    @abc.abstractmethod
    def latest(self, host: str) -> RestorePoint | None: ...

    @abc.abstractmethod
    def point(self, host: str, ref: str) -> RestorePoint:
        """A point by id, unique id prefix, or `latest`."""

    @abc.abstractmethod
    def update_point(self, point: RestorePoint) -> None:
        """Store changed annotations of a committed point (drill verdict, damage, protect)."""

    @abc.abstractmethod
    def protect(self, host: str, ref: str, on: bool) -> RestorePoint:
        """Keep a point whatever retention decides (or stop keeping it)."""

    @abc.abstractmethod
    def reader(self, point: RestorePoint, disk: DiskRecord) -> PointReader: ...

    @abc.abstractmethod
    def forget(self, points: list[RestorePoint]) -> None:
        """Remove these points (retention decided; a point protected meanwhile stays);
        their data goes at the next gc."""

    @abc.abstractmethod
    def verify(
        self,
        host: str | None = None,
        *,
        deep: bool = False,
        sample: float = 100.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> VerifyReport: ...

    @abc.abstractmethod
    def gc(self, *, margin: float | None = None, dry_run: bool = False) -> GCReport:
        """Reclaim what no point, checkpoint or running sync needs (`margin`: seconds an
        unreferenced object is kept after it was written; None: the target's default)."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""


class TargetKind:
    """How to open one kind of target from its URL (object repository, gateway)."""

    def __init__(
        self,
        schemes: tuple[str, ...],
        open: Callable[..., Target],
        init: Callable[..., Target],
    ) -> None:
        self.schemes = schemes
        self.open = open
        self.init = init


#: modules that register target kinds when imported; object mode handles every other URL
_MODULES = ["openbdr.store.objects.target", "openbdr.store.block.target"]
_KINDS: list[TargetKind] = []


def register_target_kind(kind: TargetKind) -> None:
    _KINDS.append(kind)


def _kind(url: str) -> TargetKind:
    for module in _MODULES:
        importlib.import_module(module)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    for k in _KINDS:
        if scheme in k.schemes:
            return k
    for k in _KINDS:
        if "" in k.schemes:
            return k
    raise OpenBDRError(f"no target kind handles {url!r}", "use a path, s3://, or gateway://")


def open_target(url: str, **kw: Any) -> Target:
    """The target behind a URL: a directory or `s3://…` repository, `gateway://…`."""
    return _kind(url).open(url, **kw)


def init_target(url: str, **kw: Any) -> Target:
    return _kind(url).init(url, **kw)
