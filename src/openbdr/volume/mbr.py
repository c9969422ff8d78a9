"""MBR partition tables, with the extended/logical chain.

The chain of EBRs is walked defensively: every EBR must lie inside the extended partition,
each is visited once (a loop ends the walk with a note), and the walk is bounded.
Entries that point outside the disk are clipped; what could not be parsed is reported in
`notes`, and the caller copies what it cannot map.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..extents import Extent
from .reader import BlockReader, read_at

SECTOR = 512
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
PROTECTIVE_GPT = 0xEE
MAX_LOGICAL = 256

TYPE_NAMES = {
    0x01: "FAT12",
    0x04: "FAT16",
    0x05: "Extended",
    0x06: "FAT16",
    0x07: "NTFS/exFAT",
    0x0B: "FAT32",
    0x0C: "FAT32 LBA",
    0x0E: "FAT16 LBA",
    0x0F: "Extended LBA",
    0x27: "Windows recovery",
    0x82: "Linux swap",
    0x83: "Linux",
    0x85: "Linux extended",
    0x8E: "Linux LVM",
    0xA5: "FreeBSD",
    0xEE: "GPT protective",
    0xEF: "EFI System",
    0xFD: "Linux RAID",
}


@dataclass
class MbrEntry:
    number: int  # 1-4 primary, 5+ logical, as Linux numbers them
    type_id: int
    start: int  # bytes from the start of the disk
    length: int
    bootable: bool
    logical: bool = False

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type_id, f"0x{self.type_id:02x}")


@dataclass
class MbrTable:
    entries: list[MbrEntry] = field(default_factory=list)
    #: bytes the table itself occupies: sector 0 and every EBR sector
    structures: list[Extent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    disk_signature: int = 0


def _raw_entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    """`(status, type, lba_start, lba_count)` for the four slots of a boot record."""
    out = []
    for i in range(4):
        status, ptype, start, count = struct.unpack_from("<B3xB3xII", sector, 446 + 16 * i)
        out.append((status, ptype, start, count))
    return out


def looks_like_mbr(sector: bytes) -> bool:
    """Signature present and every used slot sane (status 0x00/0x80, non-zero type and size).

    FAT and NTFS boot sectors also end in 55 AA; their bytes at 446.. rarely pass this, and
    the caller probes for a whole-disk file system first anyway.
    """
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
        return False
    used = 0
    for status, ptype, start, count in _raw_entries(sector):
        if ptype == 0:
            continue
        if status not in (0x00, 0x80) or count == 0 or start == 0:
            return False
        used += 1
    return used > 0


def is_protective(sector: bytes) -> bool:
    return (
        len(sector) >= SECTOR
        and sector[510:512] == b"\x55\xaa"
        and any(ptype == PROTECTIVE_GPT for _, ptype, _, _ in _raw_entries(sector))
    )


def parse_mbr(reader: BlockReader) -> MbrTable | None:
    """The MBR of the disk, or None if sector 0 is not one."""
    sector = read_at(reader, 0, SECTOR)
    if not looks_like_mbr(sector):
        return None
    size = reader.size
    table = MbrTable(structures=[Extent(0, SECTOR)])
    table.disk_signature = struct.unpack_from("<I", sector, 440)[0]
    extended: tuple[int, int] | None = None
    for i, (status, ptype, start, count) in enumerate(_raw_entries(sector)):
        if ptype == 0:
            continue
        off, length = start * SECTOR, count * SECTOR
        if off >= size:
            table.notes.append(f"MBR partition {i + 1} starts past the end of the disk; ignored")
            continue
        if off + length > size:
            table.notes.append(f"MBR partition {i + 1} runs past the end of the disk; clipped")
            length = size - off
        entry = MbrEntry(i + 1, ptype, off, length, status == 0x80)
        table.entries.append(entry)
        if ptype in EXTENDED_TYPES:
            if extended is None:
                extended = (start, count)
            else:
                table.notes.append("more than one extended partition; only the first is walked")
    if extended is not None:
        _walk_extended(reader, table, extended[0], extended[1])
    return table


def _walk_extended(reader: BlockReader, table: MbrTable, ext_lba: int, ext_count: int) -> None:
    """Follow the EBR chain; logical starts are relative to their EBR, links to the container."""
    size_lba = reader.size // SECTOR
    ext_end = min(ext_lba + ext_count, size_lba)
    seen: set[int] = set()
    ebr_lba = ext_lba
    number = 5
    while True:
        if ebr_lba in seen:
            table.notes.append(f"loop in the extended partition chain at sector {ebr_lba}; stopped")
            return
        if len(seen) >= MAX_LOGICAL:
            table.notes.append(f"more than {MAX_LOGICAL} logical partitions; stopped")
            return
        if not ext_lba <= ebr_lba < ext_end:
            table.notes.append(f"EBR at sector {ebr_lba} lies outside the extended partition")
            return
        seen.add(ebr_lba)
        sector = read_at(reader, ebr_lba * SECTOR, SECTOR)
        if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa":
            table.notes.append(f"EBR at sector {ebr_lba} has no boot signature; chain ends")
            return
        table.structures.append(Extent(ebr_lba * SECTOR, SECTOR))
        slots = _raw_entries(sector)
        status, ptype, start, count = slots[0]
        if ptype != 0 and count > 0:
            first = ebr_lba + start
            last = min(first + count, ext_end)
            if start == 0 or first >= ext_end:
                table.notes.append(f"logical partition {number} lies outside its container")
            else:
                if first + count > ext_end:
                    table.notes.append(
                        f"logical partition {number} runs past its container; clipped"
                    )
                table.entries.append(
                    MbrEntry(
                        number,
                        ptype,
                        first * SECTOR,
                        (last - first) * SECTOR,
                        status == 0x80,
                        logical=True,
                    )
                )
                # boot code sometimes sits between an EBR and its partition: keep that gap
                gap_end = min(first, ebr_lba + 2048)
                if gap_end > ebr_lba + 1:
                    table.structures.append(
                        Extent((ebr_lba + 1) * SECTOR, (gap_end - ebr_lba - 1) * SECTOR)
                    )
            number += 1
        _, ntype, nstart, ncount = slots[1]
        if ntype == 0 or ncount == 0:
            return
        if ntype not in EXTENDED_TYPES:
            table.notes.append(f"EBR at sector {ebr_lba} links to a non-extended entry; stopped")
            return
        ebr_lba = ext_lba + nstart
