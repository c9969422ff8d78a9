"""Real disk images for the volume tests, made with the real tools.

Files are random (seeded) so that their sectors are unique: `file_sectors` finds, by hash,
where every file's data sits in an image, which is the oracle for "never skip data a file
needs". Deleted files are filled with a marker, so a test can see that stale data is not
copied.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from openbdr.extents import Extent, normalize
from openbdr.volume.reader import BlockReader

from ..helpers import loop_device, mounted, run

MIB = 1 << 20
STALE_MARKER = b"OPENBDR-STALE-DATA-MARKER-1234\n"
SIZES = [0, 1, 100, 511, 512, 4095, 4096, 4097, 70000, 300001, 1 << 20, (3 << 20) + 17]


def make_content(top: Path, seed: int = 7) -> Path:
    """A small tree of random files (sizes around block boundaries) and nested dirs."""
    rnd = random.Random(seed)
    top.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(SIZES):
        sub = top / ("a" if i % 3 == 0 else "b/c" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file{i}.bin").write_bytes(rnd.randbytes(size))
    (top / "empty-dir").mkdir(exist_ok=True)
    return top


def write_stale(top: Path, count: int = 3, size: int = 2 * MIB) -> None:
    """Files that will be deleted: their blocks go free but keep the marker."""
    blob = (STALE_MARKER * (size // len(STALE_MARKER) + 1))[:size]
    for i in range(count):
        (top / f"stale{i}.bin").write_bytes(blob)


def delete_stale(top: Path) -> None:
    for p in top.glob("stale*.bin"):
        p.unlink()


def file_sectors(
    image: Path, content: Path, start: int = 0, length: int | None = None
) -> list[Extent]:
    """Where the content's data lives in `image[start:start+length]`, by 512-byte sector hash."""
    wanted: set[bytes] = set()
    zero = hashlib.blake2b(bytes(512), digest_size=16).digest()
    for p in content.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for off in range(0, len(data) - 511, 512):
                wanted.add(hashlib.blake2b(data[off : off + 512], digest_size=16).digest())
    wanted.discard(zero)
    found: list[tuple[int, int]] = []
    end = start + (length if length is not None else image.stat().st_size - start)
    fd = os.open(image, os.O_RDONLY)
    try:
        pos = start
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
            pos -= pos % 512
            while pos < hole:
                n = min(hole - pos, 8 * MIB)
                buf = os.pread(fd, n, pos)
                for off in range(0, len(buf) - 511, 512):
                    if hashlib.blake2b(buf[off : off + 512], digest_size=16).digest() in wanted:
                        found.append((pos + off, 512))
                pos += n
    finally:
        os.close(fd)
    return normalize(found)


def count_marker(path: Path, start: int, length: int) -> int:
    n = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            buf = f.read(min(left, 8 * MIB))
            if not buf:
                break
            n += buf.count(STALE_MARKER)
            left -= len(buf)
    return n


def copy_valid(reader: BlockReader, extents: list[Extent], dest: Path) -> None:
    """A valid-only copy: a sparse file of the same size holding only `extents`."""
    with open(dest, "wb") as out:
        out.truncate(reader.size)
        for ext in extents:
            pos = ext.offset
            while pos < ext.end:
                n = min(4 * MIB, ext.end - pos)
                buf = bytearray(n)
                got = reader.read_into(pos, buf)
                out.seek(pos)
                out.write(buf[:got])
                pos += n


def sfdisk_partitions(image: Path) -> list[tuple[int, int, int]]:
    """`(number, start, size)` in bytes, as sfdisk reads the table (an independent parser)."""
    data = json.loads(run(["sfdisk", "--json", str(image)]).stdout)["partitiontable"]
    ss = int(data.get("sectorsize", 512))
    out = []
    for p in data.get("partitions", []):
        number = int(re.search(r"(\d+)$", p["node"])[1])  # type: ignore[index]
        out.append((number, int(p["start"]) * ss, int(p["size"]) * ss))
    return out


MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "nodiscard"],
    "ext3": ["mkfs.ext3", "-q", "-F", "-E", "nodiscard"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-K"],
    "ntfs": ["mkntfs", "-Q", "-F", "-q"],
    "btrfs": ["mkfs.btrfs", "-q", "-f", "-K"],
    "swap": ["mkswap"],
}


def mount_type(kind: str) -> str | None:
    return "ntfs-3g" if kind == "ntfs" else None


def forget_btrfs() -> None:
    """Loop devices come and go: make the kernel forget btrfs devices it scanned."""
    subprocess.run(["btrfs", "device", "scan", "--forget"], capture_output=True, check=False)


def populate(image: Path, start: int, size: int, kind: str, content: Path, work: Path) -> None:
    """mkfs on the partition, copy the content in, leave deleted stale files behind."""
    with loop_device(image, start, size) as dev:
        run([*MKFS[kind], dev])
        if kind == "swap":
            return
        mp = work / f"mnt-{kind}-{start}"
        try:
            with mounted(dev, mp, fstype=mount_type(kind)):
                shutil.copytree(content, mp / "data")
                write_stale(mp)
                run(["sync"])
                delete_stale(mp)
                run(["sync"])
        finally:
            if kind == "btrfs":
                forget_btrfs()
            with contextlib.suppress(OSError):
                mp.rmdir()


@dataclass
class Disk:
    path: Path
    content: Path
    parts: dict[int, tuple[str, int, int]] = field(default_factory=dict)  # n -> (kind, start, size)


def build_gpt_disk(work: Path, content: Path) -> Disk:
    """GPT: BIOS boot, ext4, XFS, NTFS, btrfs, swap and an unknown (random) partition."""
    img = work / "gpt.img"
    with open(img, "wb") as f:
        f.truncate(660 * MIB)
    run(
        [
            "sgdisk",
            "-n",
            "1:2048:+1M",
            "-t",
            "1:ef02",
            "-n",
            "2:0:+64M",
            "-t",
            "2:8300",
            "-n",
            "3:0:+320M",
            "-n",
            "4:0:+64M",
            "-t",
            "4:0700",
            "-n",
            "5:0:+160M",
            "-n",
            "6:0:+16M",
            "-t",
            "6:8200",
            "-n",
            "7:0:+8M",
            str(img),
        ]
    )
    kinds = {2: "ext4", 3: "xfs", 4: "ntfs", 5: "btrfs", 6: "swap"}
    disk = Disk(img, content)
    rnd = random.Random(3)
    for number, start, size in sfdisk_partitions(img):
        kind = kinds.get(number, "raw")
        disk.parts[number] = (kind, start, size)
        if kind == "raw":  # boot loader / unknown data: must be kept whole
            with open(img, "r+b") as f:
                f.seek(start)
                f.write(rnd.randbytes(min(size, 256 * 1024)))
        else:
            populate(img, start, size, kind, content, work)
    with open(img, "r+b") as f:  # something in the gap between the GPT and partition 1
        f.seek(64 * 512)
        f.write(rnd.randbytes(8192))
    return disk


def build_mbr_disk(work: Path, content: Path) -> Disk:
    """MBR: a primary ext4, then an extended partition with XFS, ext3 and swap logicals."""
    img = work / "mbr.img"
    with open(img, "wb") as f:
        f.truncate(460 * MIB)
    script = "label: dos\n,64MiB,83\n,,5\n,320MiB,83\n,48MiB,83\n,8MiB,82\n"
    run(["sfdisk", "-q", str(img)], input=script)
    kinds = {1: "ext4", 5: "xfs", 6: "ext3", 7: "swap"}
    disk = Disk(img, content)
    for number, start, size in sfdisk_partitions(img):
        if number in kinds:
            disk.parts[number] = (kinds[number], start, size)
            populate(img, start, size, kinds[number], content, work)
        else:
            disk.parts[number] = ("extended", start, size)
    return disk


@contextlib.contextmanager
def partition_device(disk: Disk, number: int, read_only: bool = True) -> Iterator[str]:
    _, start, size = disk.parts[number]
    with loop_device(disk.path, start, size, read_only=read_only) as dev:
        yield dev


def partclone_used(kind: str, device: str, work: Path) -> tuple[list[Extent], int, int]:
    """partclone's used extents (its ddrescue domain map), block size and used block count."""
    tool = {"ext4": "partclone.extfs", "ext3": "partclone.extfs"}.get(kind, f"partclone.{kind}")
    dom, log = work / f"{kind}.dom", work / f"{kind}.log"
    for p in (dom, log):
        p.unlink(missing_ok=True)
    run([tool, "-D", "-q", "-B", "-s", device, "-O", str(dom), "-L", str(log)])
    used = []
    for line in dom.read_text().splitlines():
        m = re.match(r"0x([0-9A-Fa-f]+)\s+0x([0-9A-Fa-f]+)\s+\+", line)
        if m:
            used.append((int(m[1], 16), int(m[2], 16)))
    text = log.read_text()
    bs = int(re.search(r"Block size:\s+(\d+)", text)[1])  # type: ignore[index]
    blocks = int(re.search(r"Space in use:.*?=\s*(\d+) Blocks", text)[1])  # type: ignore[index]
    return normalize(used), bs, blocks
