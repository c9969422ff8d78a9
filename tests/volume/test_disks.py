"""Real images (sgdisk/sfdisk + mkfs + files + deleted files) against partclone and fsck.

- used extents equal partclone's domain map (ext4, XFS) or differ by exactly what is
  explained (NTFS: we add the backup boot sector, which lies past the last cluster);
- btrfs: partclone.btrfs marks file extents at their *logical* address and only the first
  copy of DUP metadata, so it is no reference; the oracle is btrfs-progs itself (every
  EXTENT_ITEM/METADATA_ITEM of `dump-tree -t extent` mapped by `btrfs-map-logical`);
- a valid-only copy passes each file system's checker, mounts, and every file's sha256 is
  the original's, while the deleted files' data is not copied.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from openbdr.extents import Extent, intersect, normalize, subtract, total
from openbdr.volume import FileReader, analyze, render_text

from ..helpers import loop_device, mounted, openbdr, run, tree_checksums
from .images import (
    Disk,
    count_marker,
    file_sectors,
    forget_btrfs,
    mount_type,
    partclone_used,
    partition_device,
    sfdisk_partitions,
)

pytestmark = pytest.mark.root


def _relative(extents: list[Extent], start: int) -> list[Extent]:
    return [Extent(e.offset - start, e.length) for e in extents]


def _part(layout, number):  # type: ignore[no-untyped-def]
    return next(p for p in layout.partitions if p.index == number)


def test_gpt_layout(gpt_disk: Disk) -> None:
    with FileReader(gpt_disk.path) as r:
        layout = analyze(r)
    assert layout.table == "gpt"
    assert layout.notes == [
        "partition 1: no known file system",
        "partition 7: no known file system",
    ]
    assert {p.index: (p.start, p.length) for p in layout.partitions} == {
        n: (s, z) for n, (_, s, z) in gpt_disk.parts.items()
    }
    kinds = {p.index: p.filesystem.kind for p in layout.partitions if p.filesystem}
    assert kinds == {1: None, 2: "ext4", 3: "xfs", 4: "ntfs", 5: "btrfs", 6: "swap", 7: None}
    for p in layout.partitions:
        assert p.filesystem is not None
        if p.filesystem.kind is None:  # BIOS boot and unknown: whole
            assert not p.filesystem.exact
            assert intersect(layout.valid_extents, [(p.start, p.length)]) == [
                Extent(p.start, p.length)
            ]
        else:
            assert p.filesystem.exact, p.filesystem.note
            assert 0 < p.filesystem.used_bytes < p.length
    first = min(p.start for p in layout.partitions)
    head = layout.valid_extents[0]  # gap + BIOS boot (+ the ext4 superblock right after it)
    assert head.offset == 0 and head.end >= first + gpt_disk.parts[1][2]
    assert layout.valid_extents[-1].end == layout.size  # backup GPT
    assert layout.valid_bytes < layout.size // 3
    text = render_text(layout)
    assert "xfs" in text and "btrfs" in text and "BIOS boot" in text
    json.dumps(layout.to_json())


@pytest.mark.parametrize(
    ("disk_name", "number"),
    [
        ("gpt_disk", 2),
        ("gpt_disk", 3),
        ("gpt_disk", 4),
        ("mbr_disk", 1),
        ("mbr_disk", 5),
        ("mbr_disk", 6),
    ],
)
def test_used_equals_partclone(
    request: pytest.FixtureRequest, disk_name: str, number: int, volume_work: Path
) -> None:
    disk: Disk = request.getfixturevalue(disk_name)
    kind, start, size = disk.parts[number]
    with FileReader(disk.path) as r:
        layout = analyze(r)
    fs = _part(layout, number).filesystem
    assert fs is not None and fs.exact, fs and fs.note
    ours = _relative(fs.used_extents, start)
    with partition_device(disk, number) as dev:
        theirs, bs, blocks = partclone_used(kind, dev, volume_work)
    assert total(theirs) == blocks * bs
    if kind == "ntfs":
        # partclone stops at the last whole cluster; the backup boot sector is the last sector
        backup = [Extent(size - 512, 512)]
        assert subtract(ours, theirs) == backup
        assert subtract(theirs, ours) == []
        assert fs.used_bytes == blocks * bs + 512
    else:
        assert ours == theirs
        assert fs.used_bytes == blocks * bs
    print(f"{disk_name} #{number} {kind}: ours {fs.used_bytes} partclone {blocks}x{bs}")


def test_btrfs_used_equals_extent_tree(gpt_disk: Disk, volume_work: Path) -> None:
    _kind, start, size = gpt_disk.parts[5]
    with FileReader(gpt_disk.path) as r:
        layout = analyze(r)
    fs = _part(layout, 5).filesystem
    assert fs is not None and fs.exact and fs.note is None
    ours = _relative(fs.used_extents, start)
    with partition_device(gpt_disk, 5) as dev:
        try:
            super_ = run(["btrfs", "inspect-internal", "dump-super", dev]).stdout
            nodesize = int(re.search(r"nodesize\s+(\d+)", super_)[1])  # type: ignore[index]
            tree = run(["btrfs", "inspect-internal", "dump-tree", "-t", "extent", dev]).stdout
            expected: list[tuple[int, int]] = [(0, 0x11000)]  # boot area + primary superblock
            expected += [(m, 4096) for m in (64 << 20, 256 << 30) if m + 4096 <= size]
            for m in re.finditer(r"key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)", tree):
                logical = int(m[1])
                length = int(m[3]) if m[2] == "EXTENT_ITEM" else nodesize
                where = run(["btrfs-map-logical", "-l", str(logical), "-b", str(length), dev])
                for p in re.finditer(r"physical (\d+)", where.stdout):
                    expected.append((int(p[1]), length))
            _pc, bs, blocks = partclone_used("btrfs", dev, volume_work)
        finally:
            forget_btrfs()
    assert ours == normalize(expected)
    print(f"btrfs: ours {fs.used_bytes}, btrfs-progs {total(expected)}, partclone {blocks}x{bs}")


def _check_fs(kind: str, dev: str) -> None:
    cmd = {
        "ext4": ["e2fsck", "-fn", dev],
        "ext3": ["e2fsck", "-fn", dev],
        "xfs": ["xfs_repair", "-n", dev],
        "ntfs": ["ntfsfix", "-n", dev],
        "btrfs": ["btrfs", "check", "--readonly", dev],
    }[kind]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("disk_name", ["gpt_disk", "mbr_disk"])
def test_valid_only_copy_round_trip(
    request: pytest.FixtureRequest, disk_name: str, volume_work: Path
) -> None:
    """A real valid-only sync, restored: boot regions intact, stale data gone, files equal."""
    disk: Disk = request.getfixturevalue(disk_name)
    copy = volume_work / f"{disk_name}-copy.img"
    repo = volume_work / f"{disk_name}-repo"
    shutil.rmtree(repo, ignore_errors=True)
    copy.unlink(missing_ok=True)
    openbdr("repo", "init", str(repo))
    openbdr("sync", "-r", str(repo), "-H", disk_name.replace("_", "-"), "-c", "zstd",
            str(disk.path))
    openbdr("restore", "-r", str(repo), "-H", disk_name.replace("_", "-"), "--to", str(copy))
    with FileReader(disk.path) as r:
        layout = analyze(r)
    point = json.loads(openbdr("points", "-r", str(repo), "--json").stdout)[0]
    assert point["mode"] == "full"
    manifest = next((repo / "points").rglob("*.json"))
    rec = json.loads(manifest.read_text())["disks"][0]
    # it read no more than the valid data (rounded to whole blocks it never exceeds it)
    assert rec["read_bytes"] <= layout.valid_bytes
    assert rec["valid_bytes"] <= layout.valid_bytes
    # the table as an independent parser reads it is intact
    assert sfdisk_partitions(copy) == sfdisk_partitions(disk.path)
    expected = tree_checksums(disk.content)
    with open(disk.path, "rb") as a, open(copy, "rb") as b:
        first = min(s for _, s, _ in disk.parts.values())
        assert a.read(first) == b.read(first)  # MBR gap, GPT, boot code
        if disk_name == "gpt_disk":
            _, s, z = disk.parts[1]
            a.seek(s)
            b.seek(s)
            assert a.read(z) == b.read(z)  # BIOS boot partition
            a.seek(-33 * 512, 2)
            b.seek(-33 * 512, 2)
            assert a.read() == b.read()  # backup GPT
    for number, (kind, start, size) in disk.parts.items():
        if kind in ("raw", "extended"):
            continue
        if kind == "swap":
            with open(disk.path, "rb") as a, open(copy, "rb") as b:
                a.seek(start)
                b.seek(start)
                assert a.read(4096) == b.read(4096)
            continue
        assert count_marker(disk.path, start, size) > 0  # stale data exists...
        assert count_marker(copy, start, size) == 0  # ...and was not copied
        with loop_device(copy, start, size) as dev:
            try:
                _check_fs(kind, dev)
                with mounted(dev, volume_work / "mnt-check", "ro", mount_type(kind)) as mp:
                    assert tree_checksums(mp / "data") == expected, f"{kind} #{number}"
            finally:
                if kind == "btrfs":
                    forget_btrfs()


def test_file_data_is_valid(gpt_disk: Disk) -> None:
    """Every sector of every file lies in a valid extent (the oracle the fuzz tests use)."""
    with FileReader(gpt_disk.path) as r:
        layout = analyze(r)
    sectors = file_sectors(gpt_disk.path, gpt_disk.content)
    assert total(sectors) > 4 * 4 * (1 << 20)  # four file systems worth of file data
    assert subtract(sectors, layout.valid_extents) == []


def test_mbr_layout(mbr_disk: Disk) -> None:
    with FileReader(mbr_disk.path) as r:
        layout = analyze(r)
    assert layout.table == "mbr"
    assert layout.notes == []
    got = {p.index: (p.start, p.length, p.container) for p in layout.partitions}
    assert got == {n: (s, z, k == "extended") for n, (k, s, z) in mbr_disk.parts.items()}
    kinds = {
        p.index: (p.filesystem.variant or p.filesystem.kind) if p.filesystem else None
        for p in layout.partitions
        if not p.container
    }
    assert kinds == {1: "ext4", 5: "v5", 6: "ext3", 7: "swap"}
    # each EBR sector is kept
    ebrs = [s - 2048 * 512 for n, (_, s, _) in mbr_disk.parts.items() if n >= 5]
    for e in ebrs:
        assert intersect(layout.valid_extents, [(e, 512)]) == [Extent(e, 512)]


def test_inspect_cli(gpt_disk: Disk) -> None:
    table = openbdr("inspect", str(gpt_disk.path)).stdout
    for word in ("gpt", "ext4", "xfs", "ntfs", "btrfs", "swap"):
        assert word in table.lower(), word
    data = json.loads(openbdr("inspect", "--json", str(gpt_disk.path)).stdout)
    kinds = {(p.get("filesystem") or {}).get("kind") for p in data["partitions"]}
    assert {"ext4", "xfs", "ntfs", "btrfs", "swap"} <= kinds
