"""A file system larger than its partition (made on an offset device without a size limit)."""

from __future__ import annotations

from pathlib import Path

from openbdr.extents import subtract
from openbdr.volume import FileReader, analyze

from ..helpers import run
from .images import MIB, file_sectors, make_content


def _overrun_disk(work: Path, content: Path, partition_gap: int) -> Path:
    """GPT partition 1 ends `partition_gap` bytes early; ext4 fills to the disk's end."""
    img = work / "overrun.img"
    size = 96 * MIB
    with open(img, "wb") as f:
        f.truncate(size)
    last = (size - partition_gap) // 512 - 1
    run(["sgdisk", "-n", f"1:2048:{last}", "-t", "1:8300", str(img)])
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", f"offset={MIB}", "-d", str(content),
         str(img), f"{(size - MIB) // 1024}k"])
    return img


def test_file_system_past_its_partition_is_mapped_over_the_disk(tmp_path: Path) -> None:
    content = make_content(tmp_path / "content")
    img = _overrun_disk(tmp_path, content, partition_gap=MIB)
    with FileReader(img) as r:
        layout = analyze(r)
    fs = layout.partitions[0].filesystem
    assert fs is not None and fs.kind == "ext4" and fs.exact, layout.notes
    assert any("past the end of its partition" in n for n in layout.notes)
    assert fs.used_bytes < 40 * MIB  # the bitmap was used, not the whole partition
    # every sector holding file data is valid, including any past the partition's end
    assert subtract(file_sectors(img, content), layout.valid_extents) == []


def test_overrun_into_another_partition_keeps_the_whole_partition(tmp_path: Path) -> None:
    content = make_content(tmp_path / "content")
    img = _overrun_disk(tmp_path, content, partition_gap=8 * MIB)
    # a second partition occupies the space the file system runs into
    run(["sgdisk", "-n", "2:0:0", "-t", "2:8300", str(img)])
    with FileReader(img) as r:
        layout = analyze(r)
    fs = layout.partitions[0].filesystem
    assert fs is not None and not fs.exact
    assert "larger than its volume" in (fs.note or "")
    assert subtract(file_sectors(img, content), layout.valid_extents) == []
