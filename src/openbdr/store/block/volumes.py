"""The volume backend contract of block mode: where a gateway writes disks in place.

One volume per protected disk, written at byte offsets (whole 1 MiB blocks in practice),
flushed, then frozen by a named snapshot: that snapshot is the disk's share of a restore
point. A snapshot must never show a half-written state: what `snapshot` freezes is what
was written and flushed before it, and later writes never change it. Backends:
`filevol` (local raw files with an undo journal), `rbdvol` (Ceph RBD images and snapshots),
`ebsvol` (AWS EBS snapshots through the EBS direct APIs).

An AWS EBS backend plugs in here too, through the EBS direct APIs, with one difference in
shape: an EBS snapshot is built, not frozen. `open` would keep, per volume, the id of the
newest completed snapshot; the first `write` after a snapshot calls `StartSnapshot` with
that snapshot as `ParentSnapshotId`; `write` splits each 1 MiB block into two 512 KiB
`PutSnapshotBlock` calls (SHA256 checksums, base64); `flush` is a no-op; `snapshot(name)`
calls `CompleteSnapshot` with the changed-block count and tags the snapshot with `name`;
`read_snapshot` is `GetSnapshotBlock` (512 KiB halves) on top of `ListSnapshotBlocks`;
`delete_snapshot` is EC2 `DeleteSnapshot`; `direct_source` is None (a drill creates a
volume from the snapshot through the AWS platform instead). `ebsvol` builds it, tested
against the EBS fake of tests/fakes/aws (docs/block-mode.md says what that proves).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import OpenBDRError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class VolumeError(OpenBDRError):
    """A volume or snapshot is missing, or the backend refused an operation."""


class VolumeFull(VolumeError):
    """The backend is out of space: nothing was written, the previous snapshots are intact."""


def check_name(name: str, what: str = "volume") -> str:
    if not _NAME.match(name):
        raise VolumeError(f"invalid {what} name {name!r}", "letters, digits, '.', '_', '-'")
    return name


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    size: int


class Volume(abc.ABC):
    """One disk's volume; `write`/`write_zeroes` may be called from many threads at once."""

    name: str

    @property
    @abc.abstractmethod
    def size(self) -> int: ...

    @abc.abstractmethod
    def resize(self, size: int) -> None:
        """Grow or shrink; snapshots keep their own size and content."""

    @abc.abstractmethod
    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    @abc.abstractmethod
    def write_zeroes(self, offset: int, length: int) -> None: ...

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """The live (unsnapshotted) content."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Every write so far is durable."""

    @abc.abstractmethod
    def snapshot(self, name: str) -> SnapshotInfo:
        """Freeze what was flushed as snapshot `name` (an existing one of that name is kept:
        a retried commit takes the same snapshot twice)."""

    @abc.abstractmethod
    def snapshots(self) -> list[SnapshotInfo]:
        """Oldest first."""

    @abc.abstractmethod
    def delete_snapshot(self, name: str) -> None:
        """Missing snapshots are not an error."""

    @abc.abstractmethod
    def read_snapshot(self, name: str, offset: int, length: int) -> bytes:
        """Random access into a snapshot (short at its end)."""

    def direct_source(self, name: str) -> dict[str, Any] | None:
        """A QEMU `-blockdev` spec reading the snapshot in place (None: read it through
        `read_snapshot`)."""
        return None

    def lost_writes(self) -> bool:
        """Writes acknowledged before this volume was opened are gone (an EBS pending
        snapshot the service cancelled): the gateway then vouches for none of its blocks."""
        return False

    def close(self) -> None:  # noqa: B027
        """Release what the volume holds."""


class VolumeStore(abc.ABC):
    """All volumes of one gateway on one backend."""

    url: str

    @abc.abstractmethod
    def open(self, name: str, size: int | None = None) -> Volume:
        """The volume `name`, created with `size` when missing (`VolumeError` if missing and
        no size is given)."""

    @abc.abstractmethod
    def names(self) -> list[str]: ...

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove a volume with every snapshot (missing: not an error)."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""


_BACKENDS: dict[str, Callable[[str], VolumeStore]] = {}


def register_backend(scheme: str, opener: Callable[[str], VolumeStore]) -> None:
    _BACKENDS[scheme] = opener


def open_store(url: str) -> VolumeStore:
    """`file:///dir` (or a path) for local raw files, `rbd://pool` for Ceph RBD,
    `ebs://region` for AWS EBS snapshots."""
    from . import filevol, rbdvol  # noqa: F401 - they register themselves

    scheme = url.split("://", 1)[0] if "://" in url else "file"
    if scheme == "ebs":
        from . import ebsvol  # noqa: F401 - boto3 loads only when it is used
    opener = _BACKENDS.get(scheme)
    if opener is None:
        raise VolumeError(f"unknown volume backend {url!r}", "use file:///DIR, rbd://POOL or ebs://REGION")
    return opener(url)
