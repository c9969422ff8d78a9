"""A device that starts with a file system and ends with a backup GPT header that is not
its own (a partition attached with `losetup -o` and no size limit, as the agent benchmark
once did): the file system wins; a real table still needs its primary or a consistent
backup."""

from __future__ import annotations

import re
from pathlib import Path

from openbdr.extents import subtract
from openbdr.volume import FileReader, SubReader, analyze

from ..helpers import run
from .images import MIB, file_sectors, make_content

SIZE = 64 * MIB


def _disk(tmp_path: Path) -> tuple[Path, Path, int, int]:
    """GPT disk, partition 1 up to the backup entries; ext4 fills the partition exactly."""
    content = make_content(tmp_path / "content")
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(SIZE)
    run(["sgdisk", "-n", "1:2048:0", "-t", "1:8300", str(img)])
    info = run(["sgdisk", "-i", "1", str(img)]).stdout
    start, end = (int(re.search(rf"{k} sector: (\d+)", info)[1]) * 512 for k in ("First", "Last"))
    length = (end - start + 512) // 4096 * 4096
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", f"offset={start}", "-d", str(content),
         str(img), f"{length // 1024}k"])  # fmt: skip
    return img, content, start, length


def test_file_system_wins_over_a_stray_backup_header(tmp_path: Path) -> None:
    img, content, start, length = _disk(tmp_path)
    with FileReader(img) as disk:
        # the partition plus the rest of the disk, up to the disk's backup GPT header
        tail = SubReader(disk, start, SIZE - start)
        layout = analyze(tail)
    assert layout.table == "none", layout.notes
    fs = layout.filesystem
    assert fs is not None and fs.kind == "ext4" and fs.exact, layout.notes
    assert not any("neither header is usable" in n for n in layout.notes)
    assert any("not this device's" in n for n in layout.notes)
    assert layout.valid_bytes < 24 * MIB  # the bitmaps, not the whole 63 MiB
    files = [e.__class__(e.offset - start, e.length) for e in file_sectors(img, content)]
    assert subtract(files, layout.valid_extents) == []
    # sized to the partition, the device is simply the file system
    with FileReader(img) as disk:
        exact = analyze(SubReader(disk, start, length))
    assert exact.table == "none" and exact.notes == []
    assert exact.valid_bytes == fs.used_bytes


def test_a_real_table_needs_its_primary_or_a_consistent_backup(tmp_path: Path) -> None:
    img, _content, _start, _length = _disk(tmp_path)
    with open(img, "r+b") as f:  # primary header damaged (signature kept): backup used
        f.seek(512 + 60)  # in the disk GUID: header CRC mismatch
        f.write(b"\xff" * 8)
    with FileReader(img) as disk:
        layout = analyze(disk)
    assert layout.table == "gpt" and len(layout.partitions) == 1
    assert any("using the backup" in n for n in layout.notes)
    with open(img, "r+b") as f:  # and the backup too: the whole disk, never less
        f.seek(SIZE - 512 + 60)
        f.write(b"\xff" * 8)
    with FileReader(img) as disk:
        layout = analyze(disk)
    assert layout.valid_bytes == SIZE
    assert any("neither header is usable" in n for n in layout.notes)
