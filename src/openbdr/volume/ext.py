"""ext2/3/4: used blocks from the block-group bitmaps.

Bitmaps are read in bulk (flex_bg packs them together; consecutive bitmap blocks are
fetched in one read). Groups flagged BLOCK_UNINIT have no bitmap on disk: their used blocks
are the superblock/descriptor copies and the group metadata, computed from the superblock
as e2fsprogs does. A group whose bitmap is missing, out of range or reports fewer used
blocks than its descriptor counts is taken whole. A journal that still needs recovery
means the bitmaps may be stale, so the whole volume is kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..extents import Extent, normalize
from .bitmap import set_runs
from .crc import crc32c_raw
from .model import Damaged, FilesystemInfo, Overrun
from .reader import BlockReader, read_at

KIND = "ext4"
MAGIC = 0xEF53

COMPAT_HAS_JOURNAL = 0x4
COMPAT_SPARSE_SUPER2 = 0x200
INCOMPAT_RECOVER = 0x4
INCOMPAT_JOURNAL_DEV = 0x8
INCOMPAT_META_BG = 0x10
INCOMPAT_EXTENTS = 0x40
INCOMPAT_64BIT = 0x80
INCOMPAT_FLEX_BG = 0x200
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_HUGE_FILE = 0x8
RO_COMPAT_BIGALLOC = 0x200
RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_METADATA_CSUM = 0x400
INCOMPAT_CSUM_SEED = 0x2000
BG_BLOCK_UNINIT = 0x2
MAX_READ = 4 << 20


def detect(reader: BlockReader) -> bool:
    sb = read_at(reader, 1024, 64)
    return len(sb) == 64 and struct.unpack_from("<H", sb, 0x38)[0] == MAGIC


@dataclass
class _Super:
    block_size: int
    blocks: int
    first_data_block: int
    blocks_per_group: int
    clusters_per_group: int
    cluster_ratio: int
    inodes_per_group: int
    inode_size: int
    desc_size: int
    groups: int
    compat: int
    incompat: int
    ro_compat: int
    reserved_gdt: int
    first_meta_bg: int
    backup_bgs: tuple[int, int]

    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def desc_blocks(self) -> int:
        return -(-self.groups // self.descs_per_block)

    def group_first_block(self, g: int) -> int:
        return self.first_data_block + g * self.blocks_per_group

    def has_super(self, g: int) -> bool:
        if g == 0:
            return True
        if self.compat & COMPAT_SPARSE_SUPER2:
            return g in self.backup_bgs
        if g <= 1 or not self.ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        if g % 2 == 0:
            return False
        for base in (3, 5, 7):
            n = base
            while n < g:
                n *= base
            if n == g:
                return True
        return False


def _parse_super(sb: bytes, volume_size: int) -> _Super:
    (
        inodes_count,
        blocks_lo,
        _r,
        _free,
        _ifree,
        first_data,
        log_bs,
        log_cs,
        bpg,
        cpg,
        ipg,
    ) = struct.unpack_from("<11I", sb, 0)
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    inode_size = struct.unpack_from("<H", sb, 0x58)[0]
    rev = struct.unpack_from("<I", sb, 0x4C)[0]
    if rev == 0:
        inode_size, compat, incompat, ro_compat = 128, 0, 0, 0
    if log_bs > 6:
        raise Damaged(f"impossible block size 2^{10 + log_bs}")
    bs = 1024 << log_bs
    if incompat & INCOMPAT_JOURNAL_DEV:
        raise Damaged("external journal device, not a file system")
    blocks = blocks_lo
    desc_size = 32
    if incompat & INCOMPAT_64BIT:
        blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
        desc_size = struct.unpack_from("<H", sb, 0xFE)[0]
        if desc_size < 32 or desc_size > bs or desc_size & (desc_size - 1):
            raise Damaged(f"impossible descriptor size {desc_size}")
    ratio = 1
    if ro_compat & RO_COMPAT_BIGALLOC:
        if log_cs < log_bs or log_cs - log_bs > 16:
            raise Damaged("impossible cluster size")
        ratio = 1 << (log_cs - log_bs)
    else:
        cpg = bpg
    if not 0 < cpg <= 8 * bs or bpg != cpg * ratio:
        raise Damaged(f"impossible blocks per group {bpg}")
    if blocks == 0 or first_data >= blocks or first_data > 1:
        raise Damaged("impossible block count or first data block")
    if blocks * bs > volume_size:
        raise Overrun(
            f"file system ({blocks * bs} bytes) is larger than its volume ({volume_size} bytes)",
            blocks * bs,
        )
    if not 0 < ipg <= 8 * bs or inode_size < 128 or inode_size > bs:
        raise Damaged("impossible inode geometry")
    groups = -(-(blocks - first_data) // bpg)
    if inodes_count > groups * ipg:
        raise Damaged("more inodes than groups can hold")
    backup_bgs = struct.unpack_from("<II", sb, 0x24C)
    return _Super(
        block_size=bs,
        blocks=blocks,
        first_data_block=first_data,
        blocks_per_group=bpg,
        clusters_per_group=cpg,
        cluster_ratio=ratio,
        inodes_per_group=ipg,
        inode_size=inode_size,
        desc_size=desc_size,
        groups=groups,
        compat=compat,
        incompat=incompat,
        ro_compat=ro_compat,
        reserved_gdt=struct.unpack_from("<H", sb, 0xCE)[0],
        first_meta_bg=struct.unpack_from("<I", sb, 0x104)[0],
        backup_bgs=(backup_bgs[0], backup_bgs[1]),
    )


def _descriptor_blocks(s: _Super) -> list[int]:
    """Block number of each group-descriptor block (meta_bg scatters them)."""
    first = s.first_data_block + 1
    if not s.incompat & INCOMPAT_META_BG:
        return [first + i for i in range(s.desc_blocks)]
    out = []
    for i in range(s.desc_blocks):
        if i < s.first_meta_bg:
            out.append(first + i)
        else:
            g = i * s.descs_per_block
            out.append(s.group_first_block(g) + (1 if s.has_super(g) else 0))
    return out


def _read_descriptors(reader: BlockReader, s: _Super) -> bytes:
    bs = s.block_size
    blocks = _descriptor_blocks(s)
    parts: list[bytes] = []
    i = 0
    while i < len(blocks):  # consecutive descriptor blocks are read together
        j = i + 1
        while j < len(blocks) and blocks[j] == blocks[j - 1] + 1 and (j - i) * bs < MAX_READ:
            j += 1
        if blocks[i] >= s.blocks:
            raise Damaged(f"group descriptor block {blocks[i]} lies past the end")
        data = read_at(reader, blocks[i] * bs, (j - i) * bs)
        if len(data) < (j - i) * bs:
            raise Damaged("group descriptors run past the end of the volume")
        parts.append(data)
        i = j
    return b"".join(parts)


def _group_meta(s: _Super, g: int) -> list[tuple[int, int]]:
    """Superblock and descriptor copies a group holds (what BLOCK_UNINIT leaves implicit)."""
    start = s.group_first_block(g)
    if start == 0 and s.block_size == 1024:
        start = 1
    out: list[tuple[int, int]] = []
    has_super = s.has_super(g)
    if has_super:
        out.append((start, 1))
    meta_bg = s.incompat & INCOMPAT_META_BG
    dpb = s.descs_per_block
    if not meta_bg or g // dpb < s.first_meta_bg:
        if has_super:
            old = s.first_meta_bg if meta_bg else s.desc_blocks + s.reserved_gdt
            out.append((start + 1, old))
    elif g % dpb in (0, 1, dpb - 1):
        out.append((start + (1 if has_super else 0), 1))
    return out


def analyze(reader: BlockReader, base: int) -> FilesystemInfo:
    sb = read_at(reader, 1024, 1024)
    if len(sb) < 1024:
        raise Damaged("superblock truncated")
    s = _parse_super(sb, reader.size)
    bs = s.block_size
    uuid = sb[0x68:0x78]
    label = sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", "replace")
    if s.incompat & INCOMPAT_RECOVER:
        raise Damaged("journal needs recovery, so the on-disk bitmaps may be stale")
    csum_seed: int | None = None
    if s.ro_compat & RO_COMPAT_METADATA_CSUM:
        if crc32c_raw(0xFFFFFFFF, sb[:0x3FC]) != struct.unpack_from("<I", sb, 0x3FC)[0]:
            raise Damaged("superblock checksum mismatch")
        if s.incompat & INCOMPAT_CSUM_SEED:
            csum_seed = struct.unpack_from("<I", sb, 0x270)[0]
        else:
            csum_seed = crc32c_raw(0xFFFFFFFF, sb[0x68:0x78])
    # without descriptor checksums the kernel ignores the UNINIT flags, and so do we
    desc_csum = bool(s.ro_compat & (RO_COMPAT_METADATA_CSUM | RO_COMPAT_GDT_CSUM))
    desc = _read_descriptors(reader, s)
    ds = s.desc_size
    wide = ds >= 64

    def field(g: int, lo_off: int, hi_off: int) -> int:
        v = struct.unpack_from("<I", desc, g * ds + lo_off)[0]
        if wide:
            v |= struct.unpack_from("<I", desc, g * ds + hi_off)[0] << 32
        return v

    def free_count(g: int) -> int:
        v = struct.unpack_from("<H", desc, g * ds + 0x0C)[0]
        if wide:
            v |= struct.unpack_from("<H", desc, g * ds + 0x2C)[0] << 16
        return v

    itable_blocks = -(-s.inodes_per_group * s.inode_size // bs)
    total_clusters = -(-(s.blocks - s.first_data_block) // s.cluster_ratio)
    used: list[tuple[int, int]] = [(0, (s.first_data_block + 1) * bs)]  # boot block, superblock
    notes: list[str] = []
    whole_groups: list[int] = []
    bitmap_groups: list[tuple[int, int]] = []  # (bitmap block, group)
    for g in range(s.groups):
        if desc_csum and not _desc_csum_ok(desc[g * ds : (g + 1) * ds], g, csum_seed, sb):
            notes.append(f"group {g}: descriptor checksum mismatch; keeping the whole group")
            whole_groups.append(g)
            continue
        flags = struct.unpack_from("<H", desc, g * ds + 0x12)[0]
        bb, ib, it = field(g, 0, 0x20), field(g, 4, 0x24), field(g, 8, 0x28)
        # group metadata is in use wherever it lives (flex_bg puts it in other groups)
        for blk, n in ((bb, 1), (ib, 1), (it, itable_blocks)):
            if s.first_data_block <= blk < s.blocks:
                used.append((blk * bs, min(n, s.blocks - blk) * bs))
        if flags & BG_BLOCK_UNINIT and g > 0 and desc_csum:
            if s.cluster_ratio > 1:
                whole_groups.append(g)
                continue
            for blk, n in _group_meta(s, g):
                used.append((blk * bs, n * bs))
            continue
        if not s.first_data_block <= bb < s.blocks:
            notes.append(f"group {g}: block bitmap at {bb} is outside the file system")
            whole_groups.append(g)
            continue
        bitmap_groups.append((bb, g))

    nbytes = s.clusters_per_group // 8 + (1 if s.clusters_per_group % 8 else 0)
    unit = s.cluster_ratio * bs
    bitmap_groups.sort()
    i = 0
    while i < len(bitmap_groups):
        j = i + 1
        while (
            j < len(bitmap_groups)
            and bitmap_groups[j][0] == bitmap_groups[j - 1][0] + 1
            and (j - i + 1) * bs <= MAX_READ
        ):
            j += 1
        first_blk = bitmap_groups[i][0]
        data = read_at(reader, first_blk * bs, (bitmap_groups[j - 1][0] - first_blk + 1) * bs)
        for blk, g in bitmap_groups[i:j]:
            off = (blk - first_blk) * bs
            chunk = data[off : off + nbytes]
            group_clusters = min(s.clusters_per_group, total_clusters - g * s.clusters_per_group)
            if len(chunk) < (group_clusters + 7) // 8:
                notes.append(f"group {g}: block bitmap is truncated")
                whole_groups.append(g)
                continue
            if csum_seed is not None and not _bitmap_csum_ok(
                chunk,
                s,
                csum_seed,
                desc[g * ds + 0x18 : g * ds + 0x1A],
                desc[g * ds + 0x38 : g * ds + 0x3A] if wide else b"",
            ):
                notes.append(f"group {g}: block bitmap checksum mismatch; keeping the whole group")
                whole_groups.append(g)
                continue
            runs = set_runs(chunk, group_clusters)
            counted = sum(n for _, n in runs)
            if counted < group_clusters - free_count(g):
                notes.append(
                    f"group {g}: bitmap marks {counted} clusters used, its descriptor "
                    f"{group_clusters - free_count(g)}; keeping the whole group"
                )
                whole_groups.append(g)
                continue
            first = s.first_data_block * bs + g * s.clusters_per_group * unit
            used.extend((first + a * unit, n * unit) for a, n in runs)
        i = j
    for g in whole_groups:
        first = s.group_first_block(g)
        used.append((first * bs, min(s.blocks_per_group, s.blocks - first) * bs))
    fs_bytes = s.blocks * bs
    extents = [Extent(base + e.offset, e.length) for e in normalize(used) if e.offset < fs_bytes]
    if extents and extents[-1].end > base + fs_bytes:
        extents[-1] = Extent(extents[-1].offset, base + fs_bytes - extents[-1].offset)
    variant = "ext2"
    if s.compat & COMPAT_HAS_JOURNAL:
        variant = "ext3"
    if s.incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG) or (
        s.ro_compat & (RO_COMPAT_HUGE_FILE | RO_COMPAT_BIGALLOC)
    ):
        variant = "ext4"
    note = None
    if notes:
        note = "; ".join(notes[:5]) + (f"; and {len(notes) - 5} more" if len(notes) > 5 else "")
    return FilesystemInfo(
        kind=KIND,
        variant=variant,
        total_bytes=fs_bytes,
        used_extents=extents,
        block_size=bs,
        label=label or None,
        uuid=_uuid(uuid),
        note=note,
    )


def _crc16(crc: int, data: bytes) -> int:
    """CRC-16/ARC as ext4's uninit_bg descriptors use it (bit-reflected 0x8005)."""
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _desc_csum_ok(d: bytes, g: int, seed: int | None, sb: bytes) -> bool:
    """The 16-bit checksum a descriptor carries at 0x1E (CRC32C low half, or CRC16)."""
    stored = struct.unpack_from("<H", d, 0x1E)[0]
    group = struct.pack("<I", g)
    if seed is not None:
        zeroed = d[:0x1E] + b"\0\0" + d[0x20:]
        return crc32c_raw(crc32c_raw(seed, group), zeroed) & 0xFFFF == stored
    crc = _crc16(0xFFFF, sb[0x68:0x78] + group + d[:0x1E])
    if len(d) > 0x20:
        crc = _crc16(crc, d[0x20:])
    return crc == stored


def _bitmap_csum_ok(bitmap: bytes, s: _Super, seed: int, lo: bytes, hi: bytes) -> bool:
    """metadata_csum: the descriptor holds a CRC32C of the bitmap (16 or 32 bits of it)."""
    crc = crc32c_raw(seed, bitmap[: s.clusters_per_group // 8])
    stored = int.from_bytes(lo, "little")
    if len(hi) == 2:
        return crc == stored | int.from_bytes(hi, "little") << 16
    return crc & 0xFFFF == stored


def _uuid(raw: bytes) -> str | None:
    if len(raw) != 16 or raw == bytes(16):
        return None
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
