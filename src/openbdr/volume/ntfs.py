"""NTFS: used clusters from $Bitmap (MFT record 6), plus the backup boot sector.

The boot sector gives the cluster size and where the MFT starts; record 6 is read with its
update-sequence fixups checked, its unnamed $DATA run list is decoded, and the bitmap file
is read run by run. The backup boot sector lives in the volume's last sector, outside the
cluster range the bitmap covers, and Windows wants it intact. A bitmap that does not even
mark the boot sector and the MFT as used is not believed.
"""

from __future__ import annotations

import struct

from ..extents import Extent, normalize
from .bitmap import runs_to_extents, set_runs
from .model import Damaged, FilesystemInfo, Overrun
from .reader import BlockReader, read_at

KIND = "ntfs"
OEM = b"NTFS    "
ATTR_ATTRIBUTE_LIST = 0x20
ATTR_VOLUME_NAME = 0x60
ATTR_DATA = 0x80
ATTR_END = 0xFFFFFFFF
MAX_READ = 4 << 20


def detect(reader: BlockReader) -> bool:
    return read_at(reader, 3, 8) == OEM


def _record(reader: BlockReader, offset: int, size: int) -> bytes:
    """One MFT record with its update-sequence fixups applied and checked."""
    raw = bytearray(read_at(reader, offset, size))
    if len(raw) < size or raw[:4] != b"FILE":
        raise Damaged("MFT record has no FILE signature")
    usa_ofs, usa_count = struct.unpack_from("<HH", raw, 4)
    if usa_count != size // 512 + 1 or usa_ofs + 2 * usa_count > size:
        raise Damaged("MFT record update sequence is impossible")
    usn = raw[usa_ofs : usa_ofs + 2]
    for i in range(1, usa_count):
        end = i * 512
        if raw[end - 2 : end] != usn:
            raise Damaged("MFT record torn (update sequence mismatch)")
        raw[end - 2 : end] = raw[usa_ofs + 2 * i : usa_ofs + 2 * i + 2]
    return bytes(raw)


def _attributes(rec: bytes) -> list[tuple[int, bytes]]:
    """`(type, attribute bytes)` of a record, bounded by the record."""
    out: list[tuple[int, bytes]] = []
    off = struct.unpack_from("<H", rec, 20)[0]
    while off + 8 <= len(rec):
        atype, alen = struct.unpack_from("<II", rec, off)
        if atype == ATTR_END:
            return out
        if alen < 16 or off + alen > len(rec) or alen % 8:
            raise Damaged("MFT record attribute overruns the record")
        out.append((atype, rec[off : off + alen]))
        off += alen
    raise Damaged("MFT record has no attribute end marker")


def _runlist(attr: bytes, max_lcn: int) -> list[tuple[int, int]]:
    """Decode a non-resident attribute's mapping pairs into `(lcn, clusters)`; sparse runs skip."""
    pos = struct.unpack_from("<H", attr, 32)[0]
    runs: list[tuple[int, int]] = []
    lcn = 0
    while pos < len(attr) and attr[pos] != 0:
        head = attr[pos]
        nlen, noff = head & 0x0F, head >> 4
        if nlen == 0 or nlen > 8 or noff > 8 or pos + 1 + nlen + noff > len(attr):
            raise Damaged("bad run list")
        count = int.from_bytes(attr[pos + 1 : pos + 1 + nlen], "little", signed=True)
        if count <= 0:
            raise Damaged("bad run length")
        if noff:
            lcn += int.from_bytes(
                attr[pos + 1 + nlen : pos + 1 + nlen + noff], "little", signed=True
            )
            if lcn < 0 or lcn + count > max_lcn:
                raise Damaged("run list points outside the volume")
            runs.append((lcn, count))
        pos += 1 + nlen + noff
    return runs


def analyze(reader: BlockReader, base: int) -> FilesystemInfo:
    boot = read_at(reader, 0, 512)
    if len(boot) < 512:
        raise Damaged("boot sector truncated")
    bps = struct.unpack_from("<H", boot, 11)[0]
    spc_raw = boot[13]
    spc = 1 << (256 - spc_raw) if spc_raw > 0x80 else spc_raw
    total_sectors, mft_lcn = struct.unpack_from("<QQ", boot, 40)
    cpr = struct.unpack_from("<b", boot, 64)[0]
    serial = struct.unpack_from("<Q", boot, 72)[0]
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1):
        raise Damaged("impossible sector or cluster size")
    cluster = bps * spc
    if cluster > 2 << 20:
        raise Damaged("impossible cluster size")
    record_size = 1 << -cpr if cpr < 0 else cpr * cluster
    if not 512 <= record_size <= 65536 or record_size & (record_size - 1):
        raise Damaged("impossible MFT record size")
    if total_sectors == 0 or total_sectors * bps > reader.size:
        raise Overrun(
            f"file system ({total_sectors * bps} bytes) is larger than its volume "
            f"({reader.size} bytes)",
            (total_sectors + 1) * bps,
        )
    clusters = total_sectors * bps // cluster
    # the backup boot sector sits right after the sectors the boot sector counts: a damaged
    # size or geometry field sends us to a sector that is not its copy
    if read_at(reader, total_sectors * bps, 512) != boot:
        raise Damaged("boot sector and its backup differ")
    if not 0 < mft_lcn < clusters:
        raise Damaged("MFT outside the volume")
    mft = mft_lcn * cluster
    bitmap_rec = _record(reader, mft + 6 * record_size, record_size)
    attrs = _attributes(bitmap_rec)
    data = [a for t, a in attrs if t == ATTR_DATA and a[9] == 0]
    if not data:
        if any(t == ATTR_ATTRIBUTE_LIST for t, _ in attrs):
            raise Damaged("$Bitmap is described by an attribute list (not supported)")
        raise Damaged("$Bitmap has no data attribute")
    attr = data[0]
    need = (clusters + 7) // 8
    if attr[8] == 0:  # resident: tiny volumes only
        vlen, voff = struct.unpack_from("<IH", attr, 16)
        bitmap = attr[voff : voff + vlen]
        bitmap_runs: list[tuple[int, int]] = []
    else:
        if struct.unpack_from("<Q", attr, 16)[0] != 0:
            raise Damaged("$Bitmap data starts in another record")
        bitmap_runs = _runlist(attr, clusters)
        parts = []
        got = 0
        for lcn, count in bitmap_runs:
            want = min(count * cluster, need - got)
            for off in range(0, want, MAX_READ):
                n = min(MAX_READ, want - off)
                chunk = read_at(reader, lcn * cluster + off, n)
                parts.append(chunk)
                got += len(chunk)
            if got >= need:
                break
        bitmap = b"".join(parts)
    if len(bitmap) < need:
        raise Damaged("$Bitmap is shorter than the volume")
    runs = set_runs(bitmap, clusters)
    used = runs_to_extents(runs, cluster)
    probe = normalize(used)
    # the bitmap must at least cover the boot sector, the whole MFT and itself: a run list
    # that sends us to some other data would hardly pass that
    musts = [Extent(0, cluster), Extent(mft, cluster)]
    musts += [Extent(lcn * cluster, n * cluster) for lcn, n in bitmap_runs]
    musts += [
        Extent(lcn * cluster, n * cluster)
        for lcn, n in _mft_runs(reader, mft, record_size, clusters)
    ]
    for m in musts:
        if not any(e.offset <= m.offset and m.end <= e.end for e in probe):
            raise Damaged("$Bitmap marks its own metadata free")
    backup = total_sectors * bps
    if backup + bps <= reader.size:
        used.append(Extent(backup, bps))
    label = _label(reader, mft, record_size)
    return FilesystemInfo(
        kind=KIND,
        total_bytes=min(reader.size, backup + bps),
        used_extents=[Extent(base + e.offset, e.length) for e in normalize(used)],
        block_size=cluster,
        label=label,
        uuid=f"{serial:016X}",
    )


def _mft_runs(
    reader: BlockReader, mft: int, record_size: int, clusters: int
) -> list[tuple[int, int]]:
    """Where $MFT itself lives (record 0's unnamed $DATA)."""
    rec = _record(reader, mft, record_size)
    for atype, attr in _attributes(rec):
        if atype == ATTR_DATA and attr[9] == 0 and attr[8] == 1:
            return _runlist(attr, clusters)
    raise Damaged("$MFT has no data attribute")


def _label(reader: BlockReader, mft: int, record_size: int) -> str | None:
    """$Volume's name attribute (record 3); cheap, and never a reason to fail."""
    try:
        rec = _record(reader, mft + 3 * record_size, record_size)
        for atype, attr in _attributes(rec):
            if atype == ATTR_VOLUME_NAME and attr[8] == 0:
                vlen, voff = struct.unpack_from("<IH", attr, 16)
                return attr[voff : voff + vlen].decode("utf-16-le", "replace") or None
    except (Damaged, struct.error):
        return None
    return None
