"""The source contract (DESIGN.md §4).

A source opens a `Host`; `Host.snapshot(since)` freezes every disk of the host at one
instant and yields a `Snapshot` whose disks list the extents to read: the changes since
`since` when the source tracked them (`DiskSnapshot.incremental` is True), otherwise all
valid data (a full pass, or a hash-compare pass against the previous restore point).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..extents import Extent

#: `crash-per-disk`: each disk crash-consistent on its own, not across disks (per-volume
#: platform snapshots without a consistency group)
Consistency = Literal["application", "filesystem", "crash", "crash-per-disk"]

#: unchanged blocks re-read per disk, by default, to check a change tracker's word
TRUST_SAMPLE = 8


class BlockReader(Protocol):
    """Random read access to a disk; all that the volume parsers need."""

    @property
    def size(self) -> int: ...

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        """Fill `buf` from `offset`; return the bytes read (short only at the end of the disk)."""
        ...


@dataclass(frozen=True)
class ChangeToken:
    """Opaque to the caller; persisted in the restore point for the next sync."""

    source: str
    value: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "value": self.value}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ChangeToken | None:
        if not data:
            return None
        return cls(source=str(data["source"]), value=dict(data.get("value") or {}))


class DiskSnapshot(abc.ABC):
    """One frozen disk of a snapshot."""

    #: stable name of the disk within the host (e.g. "disk0", "sda", "vol-1234")
    name: str
    #: size in bytes
    size: int
    #: True when `extents()` lists only changes since the snapshot's `since` token
    incremental: bool = False
    #: why a requested incremental fell back to a full pass (None if it did not)
    fallback_reason: str | None = None
    #: bytes of valid data on the disk (None: the total of a full pass's `extents()`)
    valid_bytes: int | None = None
    #: partition table and file systems found (`volume.DiskLayout.to_json()`), for the point
    layout: dict[str, Any] | None = None
    #: unchanged blocks that trust-but-verify re-reads (a source may scale it to the disk)
    trust_sample: int = TRUST_SAMPLE

    @abc.abstractmethod
    def extents(self) -> Iterable[Extent]:
        """Changed extents (incremental) or valid extents (full), sorted and merged.

        In an incremental, the bytes of a touched 1 MiB block that no extent covers are
        unchanged: the engine takes them from the previous restore point, so a source with
        a finer granularity (EBS 512 KiB, byte extents) need not read the whole block."""

    def zero_extents(self) -> Iterable[Extent]:
        """Extents known to be zero or discarded now (RBD `exists=False`, unallocated
        EBS/CBT ranges), sorted and merged: recorded as zero without being read."""
        return ()

    def moved_blocks(self, blocks: Iterable[int]) -> set[int]:
        """Of `blocks`, those a live capture knows changed although `extents()` does not
        list them yet: trust-but-verify must not count them as the tracker's misses."""
        return set()

    @abc.abstractmethod
    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        """Read from the frozen disk; beyond `size` nothing is read."""

    def view(self, offset: int, length: int) -> memoryview | None:
        """The frozen bytes at `offset` without a copy, when the source holds them in memory
        (None: read them with `read_into`). Valid until the snapshot is released."""
        return None

    @property
    @abc.abstractmethod
    def token(self) -> ChangeToken:
        """What the next sync passes as `since` to ask for changes after this snapshot."""

    def fingerprint(self) -> dict[str, Any]:
        """Identity of this frozen view, so that a resumed sync knows it reads the same data."""
        return {"name": self.name, "size": self.size}


class Snapshot(AbstractContextManager["Snapshot"]):
    """All disks of a host at one instant. Leaving the context releases the platform snapshot."""

    disks: list[DiskSnapshot]
    consistency: Consistency
    #: how the snapshot was taken, for the point to record (`RestorePoint.notes`): why its
    #: consistency is what it is (guest agent froze the file systems, or not and why)
    notes: Sequence[str] = ()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Release the platform snapshot; a no-op for sources that hold none."""

    def settle(self) -> dict[str, list[Extent]]:
        """Called after the engine's first pass. A live source (the agent) re-copies what
        changed meanwhile, last under freeze, and returns those extents per disk name: the
        engine stores them over the first pass. Frozen sources have nothing to settle."""
        return {}

    def committed(self) -> None:
        """Called once the restore point of this snapshot is committed: an agentless source
        keeps this platform snapshot as the base of the next change list and deletes the
        previous one. `release()` follows either way; without this call it must drop the
        new snapshot and keep the old base (the point does not exist)."""


class Host(abc.ABC):
    """A protected machine as seen through one source."""

    name: str

    @abc.abstractmethod
    def snapshot(self, since: ChangeToken | None) -> Snapshot:
        """Freeze all disks; `since` is the token of the previous restore point, if any."""

    def describe(self) -> str:
        """What the point records as its source (type and location, no secrets)."""
        return type(self).__name__
