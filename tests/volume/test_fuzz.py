"""Fuzzing the parsers with mutated real metadata (bounded, derandomized for CI).

Each example overwrites a few bytes of one structure (GPT header/entries, superblocks,
group descriptors, bitmaps, AGF/AGFL/free-space tree, MFT records, btrfs tree blocks) of a
real image. `analyze` must not raise, and every sector holding file data must stay valid:
damage is either caught (checksums, cross-checks) and answered with a larger region, or it
does not change what is used. MBR tables carry no checksum, so a mutated MBR is a different
valid table; there only "never crashes" is asserted.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openbdr.extents import subtract
from openbdr.volume import FileReader, SubReader, analyze
from openbdr.volume import btrfs as btrfs_mod
from openbdr.volume import ext as ext_mod
from openbdr.volume.reader import read_at

from .images import Disk, file_sectors
from .patched import PatchedReader

Region = tuple[str, int, int]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def gpt_regions(path: Path) -> list[Region]:
    size = path.stat().st_size
    return [("gpt header", 512, 92), ("gpt entries", 1024, 1024), ("gpt backup", size - 512, 92)]


def ext_regions(path: Path, start: int, size: int) -> list[Region]:
    with FileReader(path) as r:
        part = SubReader(r, start, size)
        sb = read_at(part, 1024, 1024)
        s = ext_mod._parse_super(sb, part.size)
        gdt = s.first_data_block + 1
        desc = read_at(part, gdt * s.block_size, s.groups * s.desc_size)
    out = [("ext sb", start + 1024, 1024), ("ext gdt", start + gdt * s.block_size, len(desc))]
    for g in range(min(s.groups, 3)):
        bb = struct.unpack_from("<I", desc, g * s.desc_size)[0]
        out.append((f"ext bitmap {g}", start + bb * s.block_size, s.block_size))
    return out


def xfs_regions(path: Path, start: int) -> list[Region]:
    with FileReader(path) as r:
        sb = read_at(r, start, 512)
        bs, _ = struct.unpack_from(">IQ", sb, 4)
        agblocks = struct.unpack_from(">I", sb, 84)[0]
        agf = read_at(r, start + 512, 512)
        root = struct.unpack_from(">I", agf, 16)[0]
    return [
        ("xfs sb", start, 512),
        ("xfs agf0", start + 512, 512),
        ("xfs agfl0", start + 1536, 512),
        ("xfs bno0", start + root * bs, bs),
        ("xfs agf1", start + agblocks * bs + 512, 512),
    ]


def ntfs_regions(path: Path, start: int) -> list[Region]:
    with FileReader(path) as r:
        boot = read_at(r, start, 512)
    cluster = struct.unpack_from("<H", boot, 11)[0] * boot[13]
    mft = start + struct.unpack_from("<Q", boot, 48)[0] * cluster
    return [
        ("ntfs boot", start, 512),
        ("ntfs $MFT", mft, 1024),
        ("ntfs $Bitmap", mft + 6 * 1024, 1024),
    ]


def btrfs_regions(path: Path, start: int, size: int) -> list[Region]:
    with FileReader(path) as r:
        part = SubReader(r, start, size)
        sb = btrfs_mod._superblock(part)
        fs = btrfs_mod._Fs(part, sb)
        array = sb[811 : 811 + struct.unpack_from("<I", sb, 160)[0]]
        off = 0
        while off < len(array):
            koff = struct.unpack_from("<QBQ", array, off)[2]
            chunk, off = btrfs_mod._parse_chunk(array, off + 17, koff)
            fs.add_chunk(chunk)
        for leaf in fs.leaves(struct.unpack_from("<Q", sb, 88)[0], sb[199]):
            for _o, t, k, data in btrfs_mod._items(leaf):
                if t == btrfs_mod.CHUNK_ITEM:
                    fs.add_chunk(btrfs_mod._parse_chunk(data, 0, k)[0])
        out = [("btrfs sb", start + 0x10000, 4096)]
        for name, logical in (
            ("chunk root", struct.unpack_from("<Q", sb, 88)[0]),
            ("root tree", struct.unpack_from("<Q", sb, 80)[0]),
        ):
            where = fs.physical(logical, fs.nodesize)
            assert where
            out.append((f"btrfs {name}", start + where[0].offset, fs.nodesize))
    return out


def _mutations(regions: list[Region]) -> st.SearchStrategy[dict[int, bytes]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[int, bytes]:
        _, base, length = draw(st.sampled_from(regions))
        patches = {}
        for _ in range(draw(st.integers(1, 3))):
            at = base + draw(st.integers(0, length - 1))
            patches[at] = draw(
                st.binary(min_size=1, max_size=8)
                | st.sampled_from([b"\x00", b"\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"])
            )
        return patches

    return build()


def _check(disk: Disk, sectors: list, patches: dict[int, bytes], seen: list[str]) -> None:  # type: ignore[type-arg]
    reader = PatchedReader(disk.path, patches)
    try:
        layout = analyze(reader)
    finally:
        reader.close()
    missing = subtract(sectors, layout.valid_extents)
    assert missing == [], (patches, missing[:3], layout.notes)
    seen.append("; ".join(n for n in layout.notes if not n.endswith("no known file system")))


def _assert_exercised(seen: list[str], minimum: int) -> None:
    """The fuzzer ran, and damage was both detected (notes) and sometimes harmless."""
    assert len(seen) >= minimum
    assert any(seen) and not all(seen)


@pytest.fixture(scope="module")
def ext4_sectors(ext4_disk: Disk) -> list:  # type: ignore[type-arg]
    return file_sectors(ext4_disk.path, ext4_disk.content)


def test_fuzz_ext4_disk(ext4_disk: Disk, ext4_sectors: list) -> None:  # type: ignore[type-arg]
    _, start, size = ext4_disk.parts[1]
    regions = gpt_regions(ext4_disk.path) + ext_regions(ext4_disk.path, start, size)

    seen: list[str] = []

    @FUZZ
    @given(_mutations(regions))
    def run(patches: dict[int, bytes]) -> None:
        _check(ext4_disk, ext4_sectors, patches, seen)

    run()
    _assert_exercised(seen, 100)


@pytest.mark.root
def test_fuzz_all_filesystems(gpt_disk: Disk) -> None:
    sectors = file_sectors(gpt_disk.path, gpt_disk.content)
    parts = gpt_disk.parts
    regions = gpt_regions(gpt_disk.path)
    regions += ext_regions(gpt_disk.path, parts[2][1], parts[2][2])
    regions += xfs_regions(gpt_disk.path, parts[3][1])
    regions += ntfs_regions(gpt_disk.path, parts[4][1])
    regions += btrfs_regions(gpt_disk.path, parts[5][1], parts[5][2])
    regions += [("swap header", parts[6][1], 4096)]

    seen: list[str] = []

    @settings(FUZZ, max_examples=300)
    @given(_mutations(regions))
    def run(patches: dict[int, bytes]) -> None:
        _check(gpt_disk, sectors, patches, seen)

    run()
    _assert_exercised(seen, 200)
    print(sorted({n[:60] for s in seen for n in s.split("; ") if n}))


@pytest.mark.root
def test_fuzz_mbr_never_crashes(mbr_disk: Disk) -> None:
    ebrs = [s - 2048 * 512 for n, (_, s, _) in mbr_disk.parts.items() if n >= 5]
    regions: list[Region] = [("mbr", 446, 66)] + [("ebr", e + 446, 66) for e in ebrs]

    @FUZZ
    @given(_mutations(regions))
    def run(patches: dict[int, bytes]) -> None:
        reader = PatchedReader(mbr_disk.path, patches)
        try:
            layout = analyze(reader)
        finally:
            reader.close()
        assert all(e.end <= layout.size for e in layout.valid_extents)

    run()
