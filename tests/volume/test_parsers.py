"""Parsers on images made without root (mkfs.ext4 -d, sgdisk on files) and on damaged input.

Damage never crashes `analyze` and never costs data a file needs: the oracle is the set of
sectors holding the files' (unique, random) content, found by hash in the image.
"""

from __future__ import annotations

import random
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbdr.extents import Extent, subtract, total
from openbdr.volume import BytesReader, FileReader, SubReader, analyze, probe_filesystem
from openbdr.volume.bitmap import set_runs
from openbdr.volume.layout import render_text

from ..helpers import run, tree_checksums
from .images import Disk, copy_valid, file_sectors, partclone_used
from .patched import PatchedReader


def _naive_runs(data: bytes, nbits: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in range(nbits):
        if data[i // 8] >> (i % 8) & 1:
            if out and out[-1][0] + out[-1][1] == i:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((i, 1))
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([0, 0xFF, 0x0F, 0xF0, 0x81, 0x7E, 1, 0x80]) | st.integers(0, 255),
        max_size=64,
    ),
    st.data(),
)
def test_set_runs_matches_bit_by_bit(values: list[int], data: st.DataObject) -> None:
    raw = bytes(values)
    nbits = data.draw(st.integers(0, len(raw) * 8))
    assert set_runs(raw, nbits) == _naive_runs(raw, nbits)


def test_set_runs_is_fast_on_a_large_bitmap() -> None:
    rnd = random.Random(1)
    # 32 MiB of bitmap (a 1 TiB ext4 with 4 KiB blocks), mostly full or empty extents
    pieces = [bytes([rnd.choice([0, 0xFF])]) * rnd.randint(1, 4096) for _ in range(20000)]
    raw = b"".join(pieces)[: 32 << 20]
    t = time.perf_counter()
    runs = set_runs(raw)
    assert time.perf_counter() - t < 5
    assert sum(n for _, n in runs) == int.from_bytes(raw, "little").bit_count()


def test_ext4_d_matches_partclone_and_round_trips(ext4_disk: Disk, volume_work: Path) -> None:
    fs_file = volume_work / "ext4-d.fs"
    with FileReader(fs_file) as r:
        info = probe_filesystem(r)
    assert info.kind == "ext4" and info.exact and info.note is None
    theirs, bs, blocks = partclone_used("ext4", str(fs_file), volume_work)
    assert info.used_extents == theirs
    assert info.used_bytes == blocks * bs

    with FileReader(ext4_disk.path) as r:
        layout = analyze(r)
        assert layout.table == "gpt" and layout.notes == []
        copy = volume_work / "ext4-d-copy.img"
        copy_valid(r, layout.valid_extents, copy)
    _, start, size = ext4_disk.parts[1]
    part = volume_work / "ext4-d-part.fs"
    with open(copy, "rb") as src, open(part, "wb") as dst:
        src.seek(start)
        dst.write(src.read(size))
    run(["e2fsck", "-fn", str(part)])
    out = volume_work / "ext4-d-out"
    out.mkdir()
    run(["debugfs", "-R", f"rdump / {out}", str(part)])
    assert tree_checksums(out) == tree_checksums(ext4_disk.content)
    assert "ext4" in render_text(layout)


# ---- damaged input -----------------------------------------------------------------------


def _file_sectors(disk: Disk) -> list[Extent]:
    cache = getattr(disk, "_sectors", None)
    if cache is None:
        cache = file_sectors(disk.path, disk.content)
        disk._sectors = cache  # type: ignore[attr-defined]
    return cache


def _assert_keeps_files(disk: Disk, reader: PatchedReader) -> None:
    layout = analyze(reader)
    missing = subtract(_file_sectors(disk), layout.valid_extents)
    assert missing == [], (missing[:5], layout.notes)


def test_bad_primary_gpt_uses_backup(ext4_disk: Disk) -> None:
    r = PatchedReader(ext4_disk.path, {512 + 40: b"\x99"})  # first usable LBA: CRC breaks
    layout = analyze(r)
    assert layout.table == "gpt"
    assert [p.index for p in layout.partitions] == [1]
    assert any("using the backup" in n for n in layout.notes)
    _assert_keeps_files(ext4_disk, r)


def test_bad_gpt_entries_crc_uses_backup(ext4_disk: Disk) -> None:
    r = PatchedReader(ext4_disk.path, {1024 + 32: b"\x07"})  # partition 1 first LBA
    layout = analyze(r)
    assert layout.partitions[0].start == ext4_disk.parts[1][1]
    assert any("entry array CRC" in n for n in layout.notes)


def test_both_gpt_headers_bad_means_whole_disk(ext4_disk: Disk) -> None:
    size = ext4_disk.path.stat().st_size
    r = PatchedReader(ext4_disk.path, {512 + 40: b"\x99", size - 512 + 40: b"\x99"})
    layout = analyze(r)
    assert layout.valid_extents == [Extent(0, size)]
    assert layout.notes


def test_truncated_disk(ext4_disk: Disk) -> None:
    data = ext4_disk.path.read_bytes()
    for cut in (0, 1, 100, 512, 1024, 17 * 1024, 40 * 1024, (1 << 20) + 4096, 3 << 20):
        layout = analyze(BytesReader(data[:cut]))
        assert total(layout.valid_extents) <= cut
        # what exists beyond the table is kept when the partition or fs is cut
        if cut > (1 << 20):
            assert layout.valid_extents[-1].end == cut or layout.notes


def _mbr(entries: list[tuple[int, int, int, int]]) -> bytearray:
    sector = bytearray(512)
    for i, (status, ptype, start, count) in enumerate(entries):
        struct.pack_into("<B3xB3xII", sector, 446 + 16 * i, status, ptype, start, count)
    sector[510:512] = b"\x55\xaa"
    return sector


def test_mbr_extended_loop_and_bounds() -> None:
    size = 64 << 20
    disk = bytearray(size)
    disk[0:512] = _mbr(
        [(0x80, 0x83, 2048, 4096), (0, 0x05, 8192, 65536), (0, 0x83, 100000, 999999)]
    )
    # EBR 1 at 8192: logical 5, link to EBR at +8192; EBR 2 links back to EBR 1 (a loop)
    disk[8192 * 512 : 8193 * 512] = _mbr([(0, 0x83, 2048, 2048), (0, 0x05, 8192, 4096)])
    disk[16384 * 512 : 16385 * 512] = _mbr([(0, 0x83, 2048, 2048), (0, 0x05, 0, 4096)])
    layout = analyze(BytesReader(bytes(disk)))
    assert layout.table == "mbr"
    assert [(p.index, p.container) for p in layout.partitions] == [
        (1, False),
        (2, True),
        (3, False),
        (5, False),
        (6, False),
    ]
    assert any("loop" in n for n in layout.notes)
    assert any("runs past the end" in n for n in layout.notes)
    for p in layout.partitions:  # unknown contents: whole partitions are valid
        if not p.container:
            assert subtract([(p.start, p.length)], layout.valid_extents) == []
    for ebr in (8192, 16384):
        assert subtract([(ebr * 512, 512)], layout.valid_extents) == []


def test_no_table_random_and_empty_disks() -> None:
    rnd = random.Random(5)
    for data in (bytes(1 << 20), rnd.randbytes(1 << 20), b"\x55\xaa" * 300, b""):
        layout = analyze(BytesReader(data))
        assert layout.table == "none"
        assert layout.valid_extents == ([Extent(0, len(data))] if data else [])


def test_garbage_superblocks_fall_back_to_whole() -> None:
    rnd = random.Random(9)
    size = 8 << 20
    for kind, offset, magic in (
        ("ext4", 1024 + 0x38, b"\x53\xef"),
        ("xfs", 0, b"XFSB"),
        ("ntfs", 3, b"NTFS    "),
        ("btrfs", 0x10040, b"_BHRfS_M"),
    ):
        for _ in range(20):
            data = bytearray(rnd.randbytes(0x20000)) + bytearray(size - 0x20000)
            data[offset : offset + len(magic)] = magic
            info = probe_filesystem(BytesReader(bytes(data)))
            assert info.kind == kind
            assert not info.exact and info.note
            assert info.used_extents == [Extent(0, size)]


def test_ext4_descriptor_pointing_past_the_end(ext4_disk: Disk, volume_work: Path) -> None:
    _, start, _ = ext4_disk.parts[1]
    gdt = start + 4096  # 4 KiB blocks: descriptors in block 1
    r = PatchedReader(ext4_disk.path, {gdt: struct.pack("<I", 0x7FFFFFF0)})
    layout = analyze(r)
    assert any("group 0" in n for n in layout.notes)
    _assert_keeps_files(ext4_disk, r)


def test_ext4_zeroed_bitmap(ext4_disk: Disk) -> None:
    _, start, _ = ext4_disk.parts[1]
    with FileReader(ext4_disk.path) as base:
        desc = bytearray(64)
        base.read_into(start + 4096, desc)
    bitmap = struct.unpack_from("<I", desc, 0)[0]
    r = PatchedReader(ext4_disk.path, {start + bitmap * 4096: bytes(4096)})
    layout = analyze(r)
    assert any("checksum" in n for n in layout.notes)
    _assert_keeps_files(ext4_disk, r)


def test_partition_reader_bounds(ext4_disk: Disk) -> None:
    with FileReader(ext4_disk.path) as r:
        sub = SubReader(r, r.size - 100, 4096)
        assert sub.size == 100
        buf = bytearray(200)
        assert sub.read_into(0, buf) == 100
        assert sub.read_into(100, buf) == 0
        assert SubReader(r, r.size + 5, 10).size == 0


def test_gpt_crc_helper_agrees_with_sgdisk(ext4_disk: Disk) -> None:
    raw = ext4_disk.path.read_bytes()[512:1024]
    hsize = struct.unpack_from("<I", raw, 12)[0]
    check = bytearray(raw[:hsize])
    check[16:20] = bytes(4)
    assert zlib.crc32(check) == struct.unpack_from("<I", raw, 16)[0]
    proc = subprocess.run(["sgdisk", "-v", str(ext4_disk.path)], capture_output=True, text=True)
    assert "No problems found" in proc.stdout


@pytest.mark.parametrize("seed", range(3))
def test_random_disk_with_signatures_never_crashes(seed: int) -> None:
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(3 << 20))
    data[510:512] = b"\x55\xaa"
    data[512:520] = b"EFI PART"
    data[1024 + 1024 + 0x38 : 1024 + 1024 + 0x3A] = b"\x53\xef"
    analyze(BytesReader(bytes(data)))
