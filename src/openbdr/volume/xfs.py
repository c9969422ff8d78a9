"""XFS: used blocks are everything an allocation group's free-space B+tree does not list.

Each AG's AGF points at the by-block-number free-space tree (bnobt). The walk checks levels,
record counts, sibling-free child pointers and visits each node once; the free extents found
must add up to the AGF's free count, otherwise the whole AG is kept. Blocks on the AG free
list (AGFL) hold nothing yet, so they are skipped too, as partclone does.
The internal log must be clean (ends with an unmount record): a dirty log can allocate
blocks on replay that the on-disk trees still show free.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..extents import Extent, normalize, subtract
from .crc import crc32c
from .model import Damaged, FilesystemInfo, Overrun
from .reader import BlockReader, read_at

KIND = "xfs"
SB_MAGIC = b"XFSB"
AGF_MAGIC = b"XAGF"
BNO_MAGICS = (b"ABTB", b"AB3B")
LOG_RECORD_MAGIC = 0xFEEDBABE
XLOG_UNMOUNT_TRANS = 0x20
BB = 512


def detect(reader: BlockReader) -> bool:
    return read_at(reader, 0, 4) == SB_MAGIC


@dataclass
class _Super:
    block_size: int
    dblocks: int
    agblocks: int
    agcount: int
    agblklog: int
    sectsize: int
    logstart: int
    logblocks: int
    crc: bool


def _parse_super(sb: bytes, volume_size: int) -> _Super:
    if len(sb) < 208:
        raise Damaged("superblock truncated")
    bs, dblocks = struct.unpack_from(">IQ", sb, 4)
    logstart = struct.unpack_from(">Q", sb, 48)[0]
    agblocks, agcount = struct.unpack_from(">II", sb, 84)
    logblocks, version, sectsize = struct.unpack_from(">IHH", sb, 96)
    blocklog, sectlog, agblklog = sb[120], sb[121], sb[124]
    if not 512 <= bs <= 65536 or bs != 1 << blocklog:
        raise Damaged(f"impossible block size {bs}")
    if not 512 <= sectsize <= bs or sectsize != 1 << sectlog:
        raise Damaged(f"impossible sector size {sectsize}")
    if agcount == 0 or agblocks < 16 or agblocks > 1 << agblklog or agblklog > 31:
        raise Damaged("impossible allocation group geometry")
    if not (agcount - 1) * agblocks < dblocks <= agcount * agblocks:
        raise Damaged("block count does not match the allocation groups")
    if dblocks * bs > volume_size:
        raise Overrun(
            f"file system ({dblocks * bs} bytes) is larger than its volume ({volume_size} bytes)",
            dblocks * bs,
        )
    return _Super(
        bs,
        dblocks,
        agblocks,
        agcount,
        agblklog,
        sectsize,
        logstart,
        logblocks,
        (version & 0xF) == 5,
    )


def _free_extents(reader: BlockReader, s: _Super, agno: int) -> tuple[list[tuple[int, int]], str]:
    """Free `(agbno, count)` extents of one AG, or `([], reason)` when it cannot be trusted."""
    bs = s.block_size
    ag_start = agno * s.agblocks * bs
    aglen = min(s.agblocks, s.dblocks - agno * s.agblocks)
    agf = read_at(reader, ag_start + s.sectsize, s.sectsize)
    if len(agf) < 224 or agf[:4] != AGF_MAGIC:
        return [], "AGF missing"
    if s.crc and not _crc_ok(agf, 216):
        return [], "AGF checksum mismatch"
    seqno, length, bno_root = struct.unpack_from(">III", agf, 8)
    bno_level = struct.unpack_from(">I", agf, 28)[0]
    freeblks = struct.unpack_from(">I", agf, 52)[0]
    if seqno != agno or length != aglen:
        return [], "AGF does not describe this AG"
    if not 0 < bno_root < aglen or not 1 <= bno_level <= 9 or freeblks > aglen:
        return [], "impossible free-space tree root"
    hdr = 56 if s.crc else 16
    maxrecs_leaf = (bs - hdr) // 8
    maxrecs_node = (bs - hdr) // 12
    free: list[tuple[int, int]] = []
    seen: set[int] = set()
    level_nodes = [bno_root]
    for level in range(bno_level - 1, -1, -1):
        children: list[int] = []
        # nodes of one level are read in block order, so that neighbours share reads
        for blk in sorted(level_nodes):
            if blk in seen or not 0 < blk < aglen:
                return [], f"free-space tree block {blk} repeated or outside the AG"
            seen.add(blk)
            node = read_at(reader, ag_start + blk * bs, bs)
            if len(node) < bs or node[:4] not in BNO_MAGICS:
                return [], f"free-space tree block {blk} has no btree magic"
            if s.crc and not _crc_ok(node, 52):
                return [], f"free-space tree block {blk} checksum mismatch"
            nlevel, numrecs = struct.unpack_from(">HH", node, 4)
            if nlevel != level:
                return [], f"free-space tree block {blk} is at the wrong level"
            if level == 0:
                if numrecs > maxrecs_leaf:
                    return [], "free-space tree leaf overflows"
                recs = struct.unpack_from(f">{2 * numrecs}I", node, hdr)
                free.extend(zip(recs[0::2], recs[1::2], strict=True))
            else:
                if numrecs == 0 or numrecs > maxrecs_node:
                    return [], "free-space tree node record count is impossible"
                children.extend(struct.unpack_from(f">{numrecs}I", node, hdr + maxrecs_node * 8))
        level_nodes = children
    free.sort()
    end = 0
    for start, count in free:
        if count == 0 or start < end or start + count > aglen:
            return [], "free extents overlap or run past the AG"
        end = start + count
    if sum(c for _, c in free) != freeblks:
        return [], "free extents do not add up to the AGF free count"
    flfirst, fllast, flcount = struct.unpack_from(">III", agf, 40)
    return free + _agfl(reader, s, ag_start, aglen, flfirst, fllast, flcount), ""


def _agfl(
    reader: BlockReader, s: _Super, ag_start: int, aglen: int, first: int, last: int, count: int
) -> list[tuple[int, int]]:
    """Blocks parked on the AG free list; none (keep them) if the list looks wrong."""
    hdr = 36 if s.crc else 0
    raw = read_at(reader, ag_start + 3 * s.sectsize, s.sectsize)
    size = (s.sectsize - hdr) // 4
    if len(raw) < s.sectsize or count == 0 or count > size or first >= size or last >= size:
        return []
    # skipping these blocks is only safe if the list is the one XFS wrote
    if s.crc and (raw[:4] != b"XAFL" or not _crc_ok(raw, 32)):
        return []
    if (last - first) % size + 1 != count:
        return []
    slots = struct.unpack_from(f">{size}I", raw, hdr)
    blocks = [slots[(first + i) % size] for i in range(count)]
    if any(not 0 < b < aglen for b in blocks):
        return []
    return [(b, 1) for b in blocks]


def _crc_ok(block: bytes, at: int) -> bool:
    """v5 metadata: CRC32C of the block with its CRC field zeroed, stored little-endian."""
    check = bytearray(block)
    check[at : at + 4] = bytes(4)
    return crc32c(check) == struct.unpack_from("<I", block, at)[0]


def _log_is_clean(reader: BlockReader, s: _Super) -> tuple[bool, str]:
    """Does the internal log end with an unmount record (nothing left to replay)?"""
    if s.logstart == 0:
        return True, ""  # external log: not on this volume
    agno = s.logstart >> s.agblklog
    agbno = s.logstart & ((1 << s.agblklog) - 1)
    start = (agno * s.agblocks + agbno) * s.block_size
    nbb = s.logblocks * s.block_size // BB
    if nbb < 2 or start + nbb * BB > s.dblocks * s.block_size:
        return False, "log lies outside the file system"

    def cycle(i: int) -> int:
        raw = read_at(reader, start + i * BB, 8)
        if len(raw) < 8:
            raise Damaged("log truncated")
        magic, cyc = struct.unpack(">II", raw)
        return cyc if magic == LOG_RECORD_MAGIC else magic

    first, last = cycle(0), cycle(nbb - 1)
    if first == 0:
        return False, "log never written"
    if first == last:
        head = nbb  # the last record ends at the end of the log
    else:
        lo, hi = 0, nbb - 1  # cycle(lo) == first, cycle(hi) != first
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cycle(mid) == first:
                lo = mid
            else:
                hi = mid
        head = hi
        # torn writes can leave newer blocks past a hole: the search must not have stopped early
        ahead = read_at(reader, start + head * BB, min(nbb - head, 2048) * BB)
        for off in range(0, len(ahead) - 7, BB):
            magic, cyc = struct.unpack_from(">II", ahead, off)
            if (cyc if magic == LOG_RECORD_MAGIC else magic) == first:
                return False, "log head is ambiguous"
    # the last record header before the head; records are at most 256 KiB
    window = min(head, 1024)
    data = read_at(reader, start + (head - window) * BB, window * BB)
    for back in range(window - 1, -1, -1):
        off = back * BB
        magic, _cyc, _ver, hlen = struct.unpack_from(">IIiI", data, off)
        if magic != LOG_RECORD_MAGIC:
            continue
        num_ops = struct.unpack_from(">i", data, off + 40)[0]
        h_size = struct.unpack_from(">i", data, off + 320)[0]
        hblks = max(1, -(-h_size // 32768)) if h_size > 32768 else 1
        rec_end = head - window + back + hblks + -(-hlen // BB)
        op_off = off + hblks * BB
        if rec_end != head or op_off + 12 > len(data) or num_ops != 1:
            return False, "log has transactions to replay"
        if data[op_off + 9] & XLOG_UNMOUNT_TRANS:
            return True, ""
        return False, "log has transactions to replay"
    return False, "no log record found before the head"


def analyze(reader: BlockReader, base: int) -> FilesystemInfo:
    sb = read_at(reader, 0, 512)
    s = _parse_super(sb, reader.size)
    if s.crc:
        sector = read_at(reader, 0, s.sectsize)
        if len(sector) < s.sectsize or not _crc_ok(sector, 224):
            raise Damaged("superblock checksum mismatch")
    clean, why = _log_is_clean(reader, s)
    if not clean:
        raise Damaged(f"{why}; the free-space trees may be stale until the log is replayed")
    bs = s.block_size
    used: list[Extent] = []
    notes: list[str] = []
    for agno in range(s.agcount):
        ag_off = agno * s.agblocks * bs
        aglen = min(s.agblocks, s.dblocks - agno * s.agblocks)
        free, why = _free_extents(reader, s, agno)
        if why:
            notes.append(f"AG {agno}: {why}; keeping the whole AG")
        ag = [Extent(ag_off, aglen * bs)]
        used.extend(subtract(ag, [(ag_off + a * bs, n * bs) for a, n in free]))
    label = sb[108:120].split(b"\0", 1)[0].decode("utf-8", "replace")
    uuid = sb[32:48].hex()
    note = "; ".join(notes[:5]) + (f"; and {len(notes) - 5} more" if len(notes) > 5 else "")
    return FilesystemInfo(
        kind=KIND,
        total_bytes=s.dblocks * bs,
        used_extents=[Extent(base + e.offset, e.length) for e in normalize(used)],
        block_size=bs,
        label=label or None,
        uuid=f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}",
        note=note or None,
        variant="v5" if s.crc else "v4",
    )
