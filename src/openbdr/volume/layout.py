"""`analyze(reader)`: a disk's partitions, file systems and valid extents.

The rule everywhere is "never less": a partition table that cannot be read means the whole
disk is valid, a file system that cannot be read means its whole partition is valid, and
bytes outside partitions that booting needs (MBR gap, GPT headers and backup, EBRs) are
always valid. Every such fallback leaves a note and a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import ModuleType

from ..extents import Extent, clip, intersect, normalize, union
from . import btrfs, ext, gpt, mbr, ntfs, swap, xfs
from .model import Damaged, DiskLayout, FilesystemInfo, Overrun, Partition, whole
from .reader import BlockReader, SubReader, read_at

log = logging.getLogger("openbdr.volume")

#: probe order: boot-sector file systems first, then the ones with deeper superblocks
PROBES: tuple[ModuleType, ...] = (ntfs, xfs, btrfs, ext, swap)


def probe_filesystem(reader: BlockReader, base: int = 0, size: int | None = None) -> FilesystemInfo:
    """What `reader` (a partition, or a whole disk) holds and which of its bytes are used.

    `base` is where the volume starts on the disk; results are absolute. Never raises on bad
    data: anything unexpected becomes the whole-volume answer with a note.
    """
    size = reader.size if size is None else size
    results: list[FilesystemInfo] = []
    for module in PROBES:
        kind = module.KIND
        try:
            if not module.detect(reader):
                continue
            info = module.analyze(reader, base)
        except OSError:
            raise
        except Overrun as exc:
            info = whole(kind, base, size, f"{kind}: {exc}")
            info.overrun_bytes = exc.needed
        except Damaged as exc:
            info = whole(kind, base, size, f"{kind}: {exc}")
        except Exception as exc:  # a parser bug on odd data must not cost data
            info = whole(kind, base, size, f"{kind}: unreadable structures ({type(exc).__name__})")
        info.used_extents = clip(info.used_extents, base + size)
        info.used_extents = [e for e in info.used_extents if e.end > base]
        if info.used_extents and info.used_extents[0].offset < base:
            first = info.used_extents[0]
            info.used_extents[0] = Extent(base, first.end - base)
        results.append(info)
    if not results:
        return whole(None, base, size, "no known file system")
    if len(results) == 1:
        return results[0]
    kinds = ", ".join(str(r.kind) for r in results)
    merged = results[0]
    merged.used_extents = union(*(r.used_extents for r in results))
    merged.exact = False
    merged.note = f"several file-system signatures ({kinds}); keeping the union of their data"
    return merged


def _partition_fs(
    reader: BlockReader,
    part: Partition,
    notes: list[str],
    others: list[Partition],
    known: Mapping[int, FilesystemInfo],
) -> None:
    if part.start in known:
        part.filesystem = known[part.start]
        return
    sub = SubReader(reader, part.start, part.length)
    part.filesystem = probe_filesystem(sub, part.start, sub.size)
    _look_past_the_end(reader, part, others)
    if part.filesystem.note:
        notes.append(f"partition {part.index}: {part.filesystem.note}")


def _look_past_the_end(reader: BlockReader, part: Partition, others: list[Partition]) -> None:
    """Map a file system that runs past its partition's end, when the disk holds the rest.

    Its blocks beyond the end are still on the disk (usually over the backup GPT, which is
    copied anyway), so its bitmaps are as good as any; only a tail that reaches past the
    disk or into another partition keeps the whole-partition answer.
    """
    fs = part.filesystem
    need = fs.overrun_bytes if fs else 0
    if not fs or need <= part.length or part.start + need > reader.size:
        return
    tail = Extent(part.start + part.length, need - part.length)
    if any(
        o is not part and not o.container and intersect([tail], [Extent(o.start, o.length)])
        for o in others
    ):
        return
    wider = probe_filesystem(SubReader(reader, part.start, need), part.start, need)
    if wider.exact and wider.kind == fs.kind:
        wider.note = (
            f"{wider.kind} runs {need - part.length} bytes past the end of its partition; "
            "mapped over the disk, those blocks are copied too"
        )
        part.filesystem = wider


def _fs_before_stray_backup(reader: BlockReader, sector0: bytes) -> FilesystemInfo | None:
    """A device that starts with a file system and ends with a backup GPT header that is
    not its own (a partition attached with `losetup -o` and no size limit runs on to the
    end of the disk and its backup header): the file system, when its superblock fits the
    device and maps exactly. A real partition table needs its primary header (damaged or
    not) or a protective MBR; a consistent backup was already taken by `parse_gpt`."""
    if mbr.is_protective(sector0) or gpt.has_primary_signature(reader):
        return None
    if not gpt.has_gpt_signature(reader):
        return None
    fs = probe_filesystem(reader, 0, reader.size)
    return fs if fs.kind is not None and fs.exact else None


def analyze(reader: BlockReader, known: Mapping[int, FilesystemInfo] | None = None) -> DiskLayout:
    """Parse the disk behind `reader`; only the reader's I/O errors escape.

    `known`: file systems whose allocation the caller already has, by the byte offset where
    they start (a mounted file system's map from the kernel, `volume.fsmap`): they are not
    parsed, since a live log may contradict their on-disk structures.
    """
    known = known or {}
    size = reader.size
    layout = DiskLayout(size=size, table="none")
    structures: list[Extent] = []
    sector0 = read_at(reader, 0, 512)
    table = gpt.parse_gpt(reader)
    if table is not None:
        layout.table = "gpt"
        layout.notes += table.notes
        structures += table.structures
        for e in table.entries:
            layout.partitions.append(
                Partition(e.number, e.start, e.length, e.type_name, name=e.name)
            )
    elif (fs := _fs_before_stray_backup(reader, sector0)) is not None:
        layout.filesystem = fs
        layout.notes.append(
            f"a backup GPT header at the end is not this device's (no primary, and it names "
            f"another place); the {fs.kind} file system at its start fits it and wins"
        )
        structures += fs.used_extents
        structures.append(Extent(size - size % 512 - 512, 512))  # the stray header itself
    elif gpt.has_gpt_signature(reader) or mbr.is_protective(sector0):
        layout.table = "gpt"
        layout.notes.append("GPT present but neither header is usable; keeping the whole disk")
        structures.append(Extent(0, size))
    elif not ntfs.detect(reader) and (old := mbr.parse_mbr(reader)) is not None:
        layout.table = "mbr"
        layout.notes += old.notes
        structures += old.structures
        for m in old.entries:
            container = m.type_id in mbr.EXTENDED_TYPES and not m.logical
            layout.partitions.append(
                Partition(m.number, m.start, m.length, m.type_name, container=container)
            )
    else:
        layout.filesystem = known[0] if 0 in known else probe_filesystem(reader, 0, size)
        if layout.filesystem.note:
            layout.notes.append(f"whole disk: {layout.filesystem.note}")
        structures += layout.filesystem.used_extents

    data = [p for p in layout.partitions if not p.container]
    if layout.table != "none":
        if data:
            # the gap before the first partition holds boot loaders (GRUB core.img, U-Boot)
            structures.append(Extent(0, min(p.start for p in data)))
        elif layout.table == "mbr" or table is not None:
            layout.notes.append("the partition table lists no partitions")
    for part in data:
        _partition_fs(reader, part, layout.notes, data, known)
        assert part.filesystem is not None
        structures += part.filesystem.used_extents
    layout.valid_extents = clip(normalize(structures), size)
    for note in layout.notes:
        log.warning("volume: %s", note)
    return layout


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def render_text(layout: DiskLayout) -> str:
    """The `openbdr inspect` table: one line per partition, then the notes."""
    lines = [
        f"disk: {_human(layout.size)} ({layout.size} bytes), table: {layout.table}, "
        f"valid: {_human(layout.valid_bytes)} in {len(layout.valid_extents)} extents",
    ]
    rows: list[tuple[str, ...]] = [("#", "start", "size", "type", "fs", "label", "used / total")]

    def fs_cols(fs: FilesystemInfo | None) -> tuple[str, str, str]:
        if fs is None:
            return "-", "", "-"
        kind = (fs.variant if fs.kind == "ext4" and fs.variant else fs.kind) or "unknown"
        if not fs.exact:
            kind += " (whole)"
        return kind, fs.label or "", f"{_human(fs.used_bytes)} / {_human(fs.total_bytes)}"

    if layout.filesystem is not None:
        rows.append(("-", "0", _human(layout.size), "whole disk", *fs_cols(layout.filesystem)))
    for p in layout.partitions:
        cols = fs_cols(p.filesystem) if not p.container else ("(container)", "", "-")
        rows.append((str(p.index), _human(p.start), _human(p.length), p.type, *cols))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for note in layout.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"
