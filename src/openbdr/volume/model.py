"""What the volume layer tells the rest of OpenBDR about a disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..extents import Extent, normalize, total


class Damaged(Exception):
    """A file system's structures are impossible; the caller falls back to the whole volume."""


class Overrun(Damaged):
    """The file system claims `needed` bytes, more than its volume holds.

    Not necessarily damage: a file system made on a device larger than its partition (an
    offset loop device without a size limit) runs into the disk's tail. The caller may look
    again over more of the disk.
    """

    def __init__(self, message: str, needed: int) -> None:
        super().__init__(message)
        self.needed = needed


@dataclass
class FilesystemInfo:
    """One file system (or a volume that could not be mapped) and the bytes it uses.

    `used_extents` are absolute disk offsets. When `exact` is False they cover the whole
    volume, because the structures could not be trusted (`note` says why).
    """

    kind: str | None
    total_bytes: int
    used_extents: list[Extent]
    block_size: int = 0
    label: str | None = None
    uuid: str | None = None
    note: str | None = None
    exact: bool = True
    #: finer name within a family, e.g. "ext3" for kind "ext4"
    variant: str | None = None
    #: bytes the file system claims when that is more than its volume (see `Overrun`)
    overrun_bytes: int = 0
    #: where the allocation comes from: "on-disk" structures, or the "kernel" map of the
    #: mounted file system (FS_IOC_GETFSMAP)
    mapped_by: str = "on-disk"

    @property
    def used_bytes(self) -> int:
        return total(self.used_extents)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "variant": self.variant,
            "total_bytes": self.total_bytes,
            "used_bytes": self.used_bytes,
            "block_size": self.block_size,
            "label": self.label,
            "uuid": self.uuid,
            "exact": self.exact,
            "note": self.note,
            "mapped_by": self.mapped_by,
        }


def whole(kind: str | None, base: int, size: int, note: str) -> FilesystemInfo:
    """The never-less answer: every byte of the volume counts as used."""
    return FilesystemInfo(
        kind=kind, total_bytes=size, used_extents=normalize([(base, size)]), note=note, exact=False
    )


@dataclass
class Partition:
    index: int
    start: int
    length: int
    type: str
    name: str = ""
    filesystem: FilesystemInfo | None = None
    #: container entries (MBR extended) hold no data of their own
    container: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start": self.start,
            "length": self.length,
            "type": self.type,
            "name": self.name,
            "container": self.container,
            "filesystem": self.filesystem.to_json() if self.filesystem else None,
        }


@dataclass
class DiskLayout:
    size: int
    table: str  # "gpt" | "mbr" | "none"
    partitions: list[Partition] = field(default_factory=list)
    valid_extents: list[Extent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the disk itself when there is no partition table
    filesystem: FilesystemInfo | None = None

    @property
    def valid_bytes(self) -> int:
        return total(self.valid_extents)

    def filesystems(self) -> list[FilesystemInfo]:
        """The whole-disk file system and those of the partitions."""
        out = [self.filesystem] if self.filesystem is not None else []
        return out + [p.filesystem for p in self.partitions if p.filesystem is not None]

    def fallbacks(self) -> list[str]:
        """Why valid data fell back to more than the file systems use: recognised file
        systems kept whole (a log to replay, damaged structures), or an unusable table.
        Unknown volumes (a BIOS boot partition, LVM) are whole by design, not listed."""
        out = [n for n in self.notes if n.startswith("GPT present but")]
        if self.filesystem is not None and self.filesystem.kind and not self.filesystem.exact:
            out.append(f"whole disk: {self.filesystem.note}")
        for p in self.partitions:
            fs = p.filesystem
            if fs is not None and fs.kind and not fs.exact:
                out.append(f"partition {p.index}: {fs.note}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "table": self.table,
            "valid_bytes": self.valid_bytes,
            "partitions": [p.to_json() for p in self.partitions],
            "filesystem": self.filesystem.to_json() if self.filesystem else None,
            "valid_extents": [[e.offset, e.length] for e in self.valid_extents],
            "notes": list(self.notes),
        }
