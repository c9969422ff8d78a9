"""GPT partition tables: primary header and entries, CRC checks, backup header.

A header is trusted only if its CRC and its entry array's CRC match. A damaged primary
falls back to the backup (found through the primary's pointer, else the last sector), and
both headers, both entry arrays and the space outside the usable range are kept as table
structures so that a restored disk has an intact GPT.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field

from ..extents import Extent
from .reader import BlockReader, read_at

SIGNATURE = b"EFI PART"
MAX_ENTRIES = 16384
MAX_ARRAY = 4 << 20

BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
TYPE_NAMES = {
    BIOS_BOOT: "BIOS boot",
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "Linux LVM",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "Linux RAID",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "Linux root (x86-64)",
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915": "Linux home",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "Linux extended boot",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "Microsoft basic data",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "Microsoft reserved",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "Windows recovery",
}


@dataclass
class GptEntry:
    number: int  # 1-based slot number, as Linux numbers partitions
    type_guid: str
    guid: str
    start: int  # bytes
    length: int
    name: str
    attributes: int

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type_guid, self.type_guid)


@dataclass
class _Header:
    lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    entries_lba: int
    num_entries: int
    entry_size: int
    entries: bytes


@dataclass
class GptTable:
    sector_size: int
    disk_guid: str
    first_usable: int  # bytes
    last_usable_end: int  # bytes (exclusive)
    entries: list[GptEntry] = field(default_factory=list)
    structures: list[Extent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    used_backup: bool = False


def _read_header(reader: BlockReader, lba: int, ss: int) -> tuple[_Header | None, str]:
    """Parse and verify the header at `lba`; `(None, reason)` when it is not usable."""
    raw = read_at(reader, lba * ss, ss)
    if len(raw) < 92 or raw[:8] != SIGNATURE:
        return None, "no GPT signature"
    hsize, hcrc = struct.unpack_from("<II", raw, 12)
    if not 92 <= hsize <= ss:
        return None, f"impossible header size {hsize}"
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != hcrc:
        return None, "header CRC mismatch"
    my_lba, alt, first, last = struct.unpack_from("<QQQQ", raw, 24)
    disk_guid = str(uuid.UUID(bytes_le=raw[56:72]))
    elba, count, esize, ecrc = struct.unpack_from("<QIII", raw, 72)
    if my_lba != lba:
        return None, f"header says it is at LBA {my_lba}, found at {lba}"
    if esize < 128 or esize % 8 or count > MAX_ENTRIES or count * esize > MAX_ARRAY:
        return None, f"impossible entry array ({count} x {esize} bytes)"
    if first > last + 1:
        return None, "first usable LBA after last usable LBA"
    entries = read_at(reader, elba * ss, count * esize)
    if len(entries) < count * esize:
        return None, "entry array runs past the end of the disk"
    if zlib.crc32(entries) != ecrc:
        return None, "entry array CRC mismatch"
    return _Header(lba, alt, first, last, disk_guid, elba, count, esize, entries), ""


def parse_gpt(reader: BlockReader) -> GptTable | None:
    """The GPT of the disk (primary, or backup if the primary is damaged), or None."""
    for ss in (512, 4096):
        if reader.size < 3 * ss:
            continue
        table = _parse(reader, ss)
        if table is not None:
            return table
    return None


def has_gpt_signature(reader: BlockReader) -> bool:
    """Some GPT header exists (valid or not): then a failed parse is damage, not absence."""
    for ss in (512, 4096):
        if read_at(reader, ss, 8) == SIGNATURE:
            return True
        last = reader.size // ss - 1
        if last > 1 and read_at(reader, last * ss, 8) == SIGNATURE:
            return True
    return False


def has_primary_signature(reader: BlockReader) -> bool:
    """A primary GPT header's signature at LBA 1 (valid or not)."""
    return any(read_at(reader, ss, 8) == SIGNATURE for ss in (512, 4096))


def _parse(reader: BlockReader, ss: int) -> GptTable | None:
    last_lba = reader.size // ss - 1
    primary, why_primary = _read_header(reader, 1, ss)
    candidates = [last_lba]
    if primary is not None and 1 < primary.alternate_lba <= last_lba:
        candidates.insert(0, primary.alternate_lba)
    backup: _Header | None = None
    why_backup = "no GPT signature"
    for lba in dict.fromkeys(candidates):
        backup, why_backup = _read_header(reader, lba, ss)
        if backup is not None:
            break
    header = primary or backup
    if header is None:
        return None
    notes: list[str] = []
    if primary is None:
        notes.append(f"primary GPT header unusable ({why_primary}); using the backup")
    elif backup is None:
        notes.append(f"backup GPT header unusable ({why_backup}); using the primary")
    size = reader.size
    table = GptTable(
        sector_size=ss,
        disk_guid=header.disk_guid,
        first_usable=min(header.first_usable * ss, size),
        last_usable_end=min((header.last_usable + 1) * ss, size),
        notes=notes,
        used_backup=primary is None,
    )
    # protective MBR, both headers and both entry arrays, plus everything outside the
    # usable range: these bytes make the restored disk's table whole
    table.structures.append(Extent(0, max(2 * ss, table.first_usable)))
    if table.last_usable_end < size:
        table.structures.append(Extent(table.last_usable_end, size - table.last_usable_end))
    for h in (primary, backup):
        if h is not None:
            table.structures.append(Extent(h.lba * ss, ss))
            table.structures.append(Extent(h.entries_lba * ss, h.num_entries * h.entry_size))
    table.structures.append(Extent(last_lba * ss, ss))
    _entries(table, header, ss, size)
    return table


def _entries(table: GptTable, header: _Header, ss: int, size: int) -> None:
    data = header.entries
    for i in range(header.num_entries):
        raw = data[i * header.entry_size : i * header.entry_size + 128]
        if raw[:16] == bytes(16):
            continue
        first, last, attrs = struct.unpack_from("<QQQ", raw, 32)
        type_guid = str(uuid.UUID(bytes_le=raw[:16]))
        part_guid = str(uuid.UUID(bytes_le=raw[16:32]))
        name = raw[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        if last < first:
            table.notes.append(f"GPT partition {i + 1} ends before it starts; ignored")
            continue
        start, length = first * ss, (last - first + 1) * ss
        if start >= size:
            table.notes.append(f"GPT partition {i + 1} starts past the end of the disk; ignored")
            continue
        if start + length > size:
            table.notes.append(f"GPT partition {i + 1} runs past the end of the disk; clipped")
            length = size - start
        table.entries.append(GptEntry(i + 1, type_guid, part_guid, start, length, name, attrs))
