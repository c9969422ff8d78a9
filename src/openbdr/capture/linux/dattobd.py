"""Changed blocks from a dattobd / elastio-snap COW file (the drivers' documented layout).

When one of these kernel modules already tracks a disk, its COW file says what changed:
a 4096-byte header (`magic` 4776, flags, file position, file size, snapshot sequence id,
series UUID, format version, changed-block count) followed by the index, one
little-endian u64 per 4 KiB block of the device, zero for a block not changed since the
last snapshot. We read only the index; the data comes from the driver's snapshot device.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from ...errors import SourceError
from ...extents import Extent, normalize

MAGIC = 4776
HEADER_SIZE = 4096
COW_BLOCK = 4096
FLAG_CLEAN = 1 << 0
FLAG_INDEX_ONLY = 1 << 1
_HEAD = struct.Struct("<IIQQQ16sQQ")
#: index bytes examined at once; all-zero pages are skipped without looking at mappings
_CHUNK = 1 << 22
_ZERO_PAGE = bytes(4096)


@dataclass(frozen=True)
class CowHeader:
    flags: int
    fpos: int
    fsize: int
    seqid: int
    uuid: str
    version: int
    nr_changed_blocks: int

    @property
    def clean(self) -> bool:
        """Closed cleanly by the driver (unmount, shutdown): the index is complete."""
        return bool(self.flags & FLAG_CLEAN)

    @property
    def incremental(self) -> bool:
        """Index only: the driver is tracking, not holding a snapshot's old data."""
        return bool(self.flags & FLAG_INDEX_ONLY)


def read_header(path: str | Path) -> CowHeader:
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < _HEAD.size:
        raise SourceError(f"COW file {path} is truncated", "is it a dattobd/elastio-snap COW file?")
    magic, flags, fpos, fsize, seqid, uid, version, changed = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise SourceError(
            f"{path} is not a dattobd/elastio-snap COW file (magic {magic}, not {MAGIC})",
            "give the COW file the driver was set up with",
        )
    return CowHeader(flags, fpos, fsize, seqid, str(uuid.UUID(bytes=uid)), version, changed)


def changed_extents(path: str | Path, device_size: int) -> list[Extent]:
    """Byte extents of the device that the COW index marks as changed, sorted and merged."""
    read_header(path)
    nblocks = -(-device_size // COW_BLOCK)
    want = nblocks * 8
    out: list[Extent] = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE + want:
            raise SourceError(
                f"COW file {path} holds an index for {(size - HEADER_SIZE) // 8} blocks, "
                f"the device has {nblocks}",
                "was it made for another device?",
            )
        pos = 0
        while pos < want:
            chunk = os.pread(fd, min(_CHUNK, want - pos), HEADER_SIZE + pos)
            if not chunk:
                break
            for page in range(0, len(chunk), 4096):
                part = chunk[page : page + 4096]
                if part == _ZERO_PAGE[: len(part)]:
                    continue
                first = (pos + page) // 8
                for k, (m,) in enumerate(struct.iter_unpack("<Q", part)):
                    if m:
                        out.append(Extent((first + k) * COW_BLOCK, COW_BLOCK))
            pos += len(chunk)
    finally:
        os.close(fd)
    return [e for e in normalize(out) if e.offset < device_size]
