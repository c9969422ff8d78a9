"""Session-wide images for the volume tests (built once: mkfs and copying take seconds)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import run
from .images import Disk, build_gpt_disk, build_mbr_disk, make_content


@pytest.fixture(scope="session")
def volume_work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="openbdr-volume-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def content(volume_work: Path) -> Path:
    return make_content(volume_work / "content")


@pytest.fixture(scope="session")
def gpt_disk(volume_work: Path, content: Path) -> Disk:
    return build_gpt_disk(volume_work, content)


@pytest.fixture(scope="session")
def mbr_disk(volume_work: Path, content: Path) -> Disk:
    return build_mbr_disk(volume_work, content)


@pytest.fixture(scope="session")
def ext4_disk(volume_work: Path, content: Path) -> Disk:
    """No root needed: an ext4 made with mkfs.ext4 -d, placed in partition 1 of a GPT disk."""
    fs = volume_work / "ext4-d.fs"
    with open(fs, "wb") as f:
        f.truncate(48 << 20)
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(content), str(fs)])
    img = volume_work / "ext4-d.img"
    with open(img, "wb") as f:
        f.truncate(56 << 20)
    run(["sgdisk", "-n", "1:2048:+48M", "-t", "1:8300", str(img)])
    start = 2048 * 512
    with open(fs, "rb") as src, open(img, "r+b") as dst:
        dst.seek(start)
        while buf := src.read(1 << 20):
            if buf.count(0) == len(buf):
                dst.seek(len(buf), 1)
            else:
                dst.write(buf)
    disk = Disk(img, content)
    disk.parts[1] = ("ext4", start, 48 << 20)
    return disk
