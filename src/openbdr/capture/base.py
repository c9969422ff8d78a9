"""The source contract (DESIGN.md §4).

A source opens a `Host`; `Host.snapshot(since)` freezes every disk of the host at one
instant and yields a `Snapshot` whose disks list the extents to read: the changes since
`since` when the source tracked them (`DiskSnapshot.incremental` is True), otherwise all
valid data (a full pass, or a hash-compare pass against the previous restore point).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..extents import Extent

Consistency = Literal["application", "filesystem", "crash"]


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

    @abc.abstractmethod
    def extents(self) -> Iterable[Extent]:
        """Changed extents (incremental) or valid extents (full), sorted and merged."""

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

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Release the platform snapshot; a no-op for sources that hold none."""


class Host(abc.ABC):
    """A protected machine as seen through one source."""

    name: str

    @abc.abstractmethod
    def snapshot(self, since: ChangeToken | None) -> Snapshot:
        """Freeze all disks; `since` is the token of the previous restore point, if any."""


def iter_disks(snapshot: Snapshot) -> Iterator[tuple[int, DiskSnapshot]]:
    return enumerate(snapshot.disks)
