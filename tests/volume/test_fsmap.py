"""The kernel's allocation map of a mounted file system (`volume/fsmap.py`) against what
`xfs_io -c fsmap` prints, on XFS and ext4."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from openbdr.extents import total
from openbdr.volume.fsmap import FS_IOC_GETFSMAP, encode_dev, free_extents, used_extents

from ..helpers import loop_device, make_ext4, mounted, run

MiB = 1 << 20


def test_ioctl_number_and_device_encoding() -> None:
    assert FS_IOC_GETFSMAP == 0xC0C0583B  # _IOWR('X', 59, struct fsmap_head) in linux/fsmap.h
    assert encode_dev(7, 2) == 0x702
    assert encode_dev(259, 300) == (300 & 0xFF) | (259 << 8) | ((300 & ~0xFF) << 12)


def _xfs_io_free(mp: Path, major: int, minor: int) -> int:
    """Bytes `xfs_io -c fsmap` lists as free space of the device (512-byte units)."""
    out = run(["xfs_io", "-c", "fsmap", str(mp)]).stdout
    pat = rf"\s{major}:{minor} \[\d+\.\.\d+\]: free space (\d+)"
    return 512 * sum(int(m[1]) for m in re.finditer(pat, out))


@pytest.mark.root
@pytest.mark.parametrize("kind", ["xfs", "ext4"])
def test_free_space_is_what_xfs_io_shows(tmp_path: Path, kind: str) -> None:
    img = tmp_path / "fs.img"
    if kind == "xfs":
        with open(img, "wb") as f:
            f.truncate(300 * MiB)
        run(["mkfs.xfs", "-q", str(img)])
    else:
        make_ext4(img, 128)
    with loop_device(img) as dev, mounted(dev, tmp_path / "m") as mp:
        for i in range(3):
            (mp / f"f{i}").write_bytes(os.urandom(7 * MiB))
        os.sync()
        st = os.stat(dev)
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        free = free_extents(str(mp), major, minor)
        assert total(free) == _xfs_io_free(mp, major, minor) > 0
        size = img.stat().st_size
        used = used_extents(str(mp), major, minor, size, base=MiB)
        assert used[0].offset == MiB  # shifted to where the volume starts on its disk
        assert total(used) + total(free) == size
        assert 21 * MiB <= total(used) < size / 2
        # another device's records are not this file system's free space
        assert free_extents(str(mp), major, minor + 1000) == []
