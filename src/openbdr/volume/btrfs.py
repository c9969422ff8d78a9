"""btrfs: used bytes from the extent tree, mapped through the chunk tree to this device.

Two answers exist. The coarse one is every device extent allocated to a chunk: all data
and metadata live in chunks, so it is always enough. The fine one lists the extent tree's
EXTENT_ITEM/METADATA_ITEM ranges mapped to this device's stripes (what partclone copies);
it is used when every step checks out: one device or mirror-only profiles, no tree-log to
replay (fsync'd data there is not in the committed extent tree), no feature we do not know.
Anything odd in the fine walk falls back to the coarse answer; an unusable superblock or
chunk tree falls back to the whole volume.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from dataclasses import dataclass

from ..extents import Extent, normalize
from .crc import crc32c
from .model import Damaged, FilesystemInfo
from .reader import BlockReader, read_at

KIND = "btrfs"
MAGIC = b"_BHRfS_M"
SUPER_OFFSET = 0x10000
SUPER_MIRRORS = (0x10000, 64 << 20, 256 << 30)
HEADER = 101
ITEM = 25
KEY_PTR = 33

CHUNK_ITEM = 228
ROOT_ITEM = 132
EXTENT_ITEM = 168
METADATA_ITEM = 169
EXTENT_TREE = 2

RAID0, RAID1, DUP, RAID10, RAID5, RAID6, RAID1C3, RAID1C4 = (
    0x8,
    0x10,
    0x20,
    0x40,
    0x80,
    0x100,
    0x200,
    0x400,
)
STRIPED = RAID0 | RAID10 | RAID5 | RAID6

INCOMPAT_METADATA_UUID = 0x400
INCOMPAT_KNOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
MAX_NODES = 1 << 22


def detect(reader: BlockReader) -> bool:
    return read_at(reader, SUPER_OFFSET + 64, 8) == MAGIC


@dataclass
class _Chunk:
    logical: int
    length: int
    type: int
    stripes: list[tuple[int, int]]  # (devid, physical offset)
    sub_stripes: int

    def per_device(self) -> int:
        """Bytes each stripe occupies on its device."""
        n = len(self.stripes)
        if self.type & RAID0:
            return -(-self.length // n)
        if self.type & RAID10:
            return -(-self.length * max(1, self.sub_stripes) // n)
        if self.type & RAID5:
            return -(-self.length // max(1, n - 1))
        if self.type & RAID6:
            return -(-self.length // max(1, n - 2))
        return self.length


def _parse_chunk(data: bytes, off: int, logical: int) -> tuple[_Chunk, int]:
    """A chunk item at `off`; returns it and the offset just past its stripes."""
    length, _owner, _stripe_len, ctype = struct.unpack_from("<QQQQ", data, off)
    num_stripes, sub_stripes = struct.unpack_from("<HH", data, off + 44)
    if num_stripes == 0 or num_stripes > 256 or length == 0:
        raise Damaged("impossible chunk item")
    stripes = []
    for i in range(num_stripes):
        devid, phys = struct.unpack_from("<QQ", data, off + 48 + 32 * i)
        stripes.append((devid, phys))
    return _Chunk(logical, length, ctype, stripes, sub_stripes), off + 48 + 32 * num_stripes


def _csum_ok(block: bytes, csum_type: int) -> bool:
    """Checksum of bytes 32.. against the first bytes; xxhash64 (type 1) is not checked."""
    body = block[32:]
    if csum_type == 0:
        return crc32c(body) == struct.unpack_from("<I", block, 0)[0]
    if csum_type == 2:
        return hashlib.sha256(body).digest() == block[:32]
    if csum_type == 3:
        return hashlib.blake2b(body, digest_size=32).digest() == block[:32]
    return True


class _Fs:
    def __init__(self, reader: BlockReader, sb: bytes) -> None:
        self.reader = reader
        self.csum_type = struct.unpack_from("<H", sb, 196)[0]
        self.nodesize = struct.unpack_from("<I", sb, 148)[0]
        incompat = struct.unpack_from("<Q", sb, 188)[0]
        self.fsid = sb[571:587] if incompat & INCOMPAT_METADATA_UUID else sb[32:48]
        self.devid = struct.unpack_from("<Q", sb, 201)[0]
        self.chunks: list[_Chunk] = []
        self.starts: list[int] = []
        self.nodes_read = 0

    def add_chunk(self, chunk: _Chunk) -> None:
        i = bisect.bisect_left(self.starts, chunk.logical)
        if i < len(self.starts) and self.starts[i] == chunk.logical:
            return
        self.starts.insert(i, chunk.logical)
        self.chunks.insert(i, chunk)

    def chunk_of(self, logical: int) -> _Chunk | None:
        i = bisect.bisect_right(self.starts, logical) - 1
        if i >= 0 and logical < self.chunks[i].logical + self.chunks[i].length:
            return self.chunks[i]
        return None

    def physical(self, logical: int, length: int) -> list[Extent] | None:
        """Where `[logical, +length)` sits on this device; None if it cannot be said exactly."""
        c = self.chunk_of(logical)
        if c is None or logical + length > c.logical + c.length or c.type & STRIPED:
            return None
        rel = logical - c.logical
        return [Extent(p + rel, length) for d, p in c.stripes if d == self.devid]

    def node(self, logical: int, level: int | None) -> bytes:
        self.nodes_read += 1
        if self.nodes_read > MAX_NODES:
            raise Damaged("tree walk does not end")
        where = self.physical(logical, self.nodesize)
        if not where:
            raise Damaged(f"tree block {logical} is not on this device")
        data = read_at(self.reader, where[0].offset, self.nodesize)
        if len(data) < self.nodesize:
            raise Damaged(f"tree block {logical} lies past the end")
        if not _csum_ok(data, self.csum_type):
            raise Damaged(f"tree block {logical} checksum mismatch")
        bytenr = struct.unpack_from("<Q", data, 48)[0]
        nritems, nlevel = struct.unpack_from("<IB", data, 96)
        if data[32:48] != self.fsid or bytenr != logical:
            raise Damaged(f"tree block {logical} does not belong here")
        if (level is not None and nlevel != level) or nlevel > 7:
            raise Damaged(f"tree block {logical} is at the wrong level")
        per = ITEM if nlevel == 0 else KEY_PTR
        if HEADER + nritems * per > self.nodesize:
            raise Damaged(f"tree block {logical} has too many items")
        return data

    def leaves(self, root: int, level: int) -> list[bytes]:
        """Every leaf of a tree, depth first; each block visited once."""
        out = []
        seen: set[int] = set()
        stack = [(root, level)]
        while stack:
            logical, lvl = stack.pop()
            if logical in seen:
                raise Damaged("tree block referenced twice")
            seen.add(logical)
            data = self.node(logical, lvl)
            nritems = struct.unpack_from("<I", data, 96)[0]
            if lvl == 0:
                out.append(data)
                continue
            for i in reversed(range(nritems)):
                ptr = struct.unpack_from("<Q", data, HEADER + i * KEY_PTR + 17)[0]
                stack.append((ptr, lvl - 1))
        return out


def _items(leaf: bytes) -> list[tuple[int, int, int, bytes]]:
    """`(objectid, type, offset, data)` of a leaf's items, data bounded by the block."""
    out = []
    nritems = struct.unpack_from("<I", leaf, 96)[0]
    for i in range(nritems):
        objectid, ktype, koff, doff, dsize = struct.unpack_from("<QBQII", leaf, HEADER + i * ITEM)
        start = HEADER + doff
        if start + dsize > len(leaf):
            raise Damaged("leaf item data overruns the block")
        out.append((objectid, ktype, koff, leaf[start : start + dsize]))
    return out


def _superblock(reader: BlockReader) -> bytes:
    sb = read_at(reader, SUPER_OFFSET, 4096)
    if len(sb) < 4096 or sb[64:72] != MAGIC:
        raise Damaged("superblock truncated")
    if struct.unpack_from("<Q", sb, 48)[0] != SUPER_OFFSET:
        raise Damaged("superblock is not at its own address")
    if (
        struct.unpack_from("<H", sb, 196)[0] == 0
        and crc32c(sb[32:]) != struct.unpack_from("<I", sb, 0)[0]
    ):
        raise Damaged("superblock checksum mismatch")
    sectorsize, nodesize = struct.unpack_from("<II", sb, 144)
    for v in (sectorsize, nodesize):
        if not 4096 <= v <= 65536 or v & (v - 1):
            raise Damaged("impossible sector or node size")
    if nodesize < sectorsize:
        raise Damaged("node smaller than a sector")
    return sb


def analyze(reader: BlockReader, base: int) -> FilesystemInfo:
    sb = _superblock(reader)
    fs = _Fs(reader, sb)
    dev_total = struct.unpack_from("<Q", sb, 209)[0]
    if dev_total > reader.size:
        raise Damaged(f"device ({dev_total} bytes) is larger than its volume ({reader.size} bytes)")
    sys_size = struct.unpack_from("<I", sb, 160)[0]
    if sys_size > 2048:
        raise Damaged("impossible system chunk array")
    array = sb[811 : 811 + sys_size]
    off = 0
    while off < len(array):
        _oid, ktype, koff = struct.unpack_from("<QBQ", array, off)
        if ktype != CHUNK_ITEM:
            raise Damaged("system chunk array holds something else")
        chunk, off = _parse_chunk(array, off + 17, koff)
        fs.add_chunk(chunk)
    chunk_root, chunk_level = struct.unpack_from("<Q", sb, 88)[0], sb[199]
    for leaf in fs.leaves(chunk_root, chunk_level):
        for _oid, ktype, koff, data in _items(leaf):
            if ktype == CHUNK_ITEM:
                fs.add_chunk(_parse_chunk(data, 0, koff)[0])

    fixed = [Extent(0, SUPER_OFFSET + 4096)]  # boot area and primary superblock
    fixed += [Extent(m, 4096) for m in SUPER_MIRRORS[1:] if m + 4096 <= dev_total]
    coarse = list(fixed)
    for c in fs.chunks:
        n = c.per_device()
        coarse += [Extent(p, n) for d, p in c.stripes if d == fs.devid]
    coarse = [e for e in normalize(coarse) if e.offset < dev_total]
    if coarse and coarse[-1].end > dev_total:
        coarse[-1] = Extent(coarse[-1].offset, dev_total - coarse[-1].offset)

    note = None
    try:
        used = _fine(fs, sb) + fixed
        used = [e for e in normalize(used) if e.offset < dev_total]
        if used and used[-1].end > dev_total:
            used[-1] = Extent(used[-1].offset, dev_total - used[-1].offset)
    except (Damaged, struct.error) as exc:
        used, note = coarse, f"{exc}; counting whole allocated chunks"
    label = sb[299:555].split(b"\0", 1)[0].decode("utf-8", "replace")
    fsid = sb[32:48].hex()
    return FilesystemInfo(
        kind=KIND,
        total_bytes=dev_total,
        used_extents=[Extent(base + e.offset, e.length) for e in used],
        block_size=fs.nodesize,
        label=label or None,
        uuid=f"{fsid[:8]}-{fsid[8:12]}-{fsid[12:16]}-{fsid[16:20]}-{fsid[20:]}",
        note=note,
    )


def _fine(fs: _Fs, sb: bytes) -> list[Extent]:
    incompat = struct.unpack_from("<Q", sb, 188)[0]
    if incompat & ~INCOMPAT_KNOWN:
        raise Damaged(f"unknown incompatible features 0x{incompat & ~INCOMPAT_KNOWN:x}")
    if struct.unpack_from("<Q", sb, 96)[0] != 0:
        raise Damaged("a tree-log awaits replay")
    root, root_level = struct.unpack_from("<Q", sb, 80)[0], sb[198]
    extent_root = None
    for leaf in fs.leaves(root, root_level):
        for oid, ktype, _koff, data in _items(leaf):
            if oid == EXTENT_TREE and ktype == ROOT_ITEM:
                if len(data) < 239:
                    raise Damaged("extent tree root item truncated")
                extent_root = (struct.unpack_from("<Q", data, 176)[0], data[238])
    if extent_root is None:
        raise Damaged("no extent tree")
    used: list[Extent] = []
    for leaf in fs.leaves(*extent_root):
        for oid, ktype, koff, _data in _items(leaf):
            if ktype == EXTENT_ITEM:
                length = koff
            elif ktype == METADATA_ITEM:
                length = fs.nodesize
            else:
                continue
            chunk = fs.chunk_of(oid)
            if chunk is None:
                raise Damaged(f"extent {oid} is in no chunk")
            where = fs.physical(oid, length)
            if where is None:  # striped profile: keep this chunk's stripes whole
                n = chunk.per_device()
                used += [Extent(p, n) for d, p in chunk.stripes if d == fs.devid]
            else:
                used += where
    return used
