"""The volumes (partitions or a bare file system) of a disk image, for fsck, mount and probes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .image import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Volume:
    #: partition number as the OS counts (1-based); 0 is a file system on the bare disk
    number: int
    offset: int
    length: int
    fstype: str | None
    label: str | None = None


class _Reader:
    """`volume.BlockReader` over an `Image`."""

    def __init__(self, image: Image) -> None:
        self.image = image

    @property
    def size(self) -> int:
        return self.image.size

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        data = self.image.pread(offset, len(buf))
        memoryview(buf)[: len(data)] = data
        return len(data)


def volumes(image: Image) -> list[Volume]:
    """Data volumes by the partition table and file-system probes (`volume.analyze`)."""
    from ..volume import analyze

    layout = analyze(_Reader(image))
    out = []
    for p in layout.partitions:
        if p.container:
            continue
        fs = p.filesystem
        out.append(
            Volume(p.index, p.start, p.length, fs.kind if fs else None, fs.label if fs else None)
        )
    if not out and layout.filesystem is not None and layout.filesystem.kind:
        fs = layout.filesystem
        out.append(Volume(0, 0, image.size, fs.kind, fs.label))
    return out


def find_volume(vols: list[Volume], want: int | str | None) -> Volume | None:
    """By partition number, by label, or the first volume with a known file system."""
    for v in vols:
        if want is None and v.fstype:
            return v
        if want is not None and (str(v.number) == str(want) or v.label == want):
            return v
    return None
