"""Unmounted volumes whose log or journal needs replay: mapped after a replay on a
throwaway overlay (the image is not modified), or kept whole with the reason in the point."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from openbdr.capture.image import data_extents
from openbdr.capture.replay import analyze_replayed, needs_replay
from openbdr.extents import intersect, total
from openbdr.volume import FileReader, analyze

from ..helpers import loop_device, make_ext4, mounted, openbdr, run, sha256

pytestmark = [pytest.mark.root]

MiB = 1 << 20


def _copy_while_mounted(image: Path, out: Path, kind: str) -> Path:
    """A copy of `image` taken while it is mounted, written to and synced: the XFS log
    holds transactions and the ext4 journal needs recovery, as after a crash."""
    with loop_device(image) as dev, mounted(dev, image.parent / f"m-{kind}") as mnt:
        (mnt / "data").mkdir()
        for i in range(6):
            (mnt / "data" / f"f{i}").write_bytes(os.urandom(3 * MiB))
        run(["sync"])
        run(["cp", "--sparse=always", str(image), str(out)])
    return out


def _dirty(tmp_path: Path, kind: str) -> Path:
    img = tmp_path / f"{kind}.img"
    if kind == "xfs":
        with open(img, "wb") as f:
            f.truncate(300 * MiB)  # the smallest XFS mkfs.xfs makes
        run(["mkfs.xfs", "-q", str(img)])
    else:
        make_ext4(img, 128)
    return _copy_while_mounted(img, tmp_path / f"{kind}-dirty.img", kind)


def _after_real_replay(image: Path, tmp_path: Path) -> int:
    """Valid bytes of a copy the kernel replayed by a mount (the reference)."""
    ref = tmp_path / "ref.img"
    shutil.copyfile(image, ref)
    with loop_device(ref) as dev, mounted(dev, tmp_path / "mref"):
        pass
    n = analyze(FileReader(ref)).valid_bytes
    ref.unlink()
    return n


@pytest.mark.parametrize("kind", ["xfs", "ext4"])
def test_log_replayed_on_an_overlay_not_on_the_image(tmp_path: Path, kind: str) -> None:
    img = _dirty(tmp_path, kind)
    before = sha256(img)
    plain = analyze(FileReader(img))
    assert plain.filesystem is not None and needs_replay(plain.filesystem), plain.notes
    assert plain.valid_bytes == img.stat().st_size  # the never-less answer without replay

    layout = analyze_replayed(FileReader(img), str(img))
    assert sha256(img) == before  # only the overlay was written
    assert layout.filesystem is not None and layout.filesystem.exact
    assert layout.filesystem.mapped_by == "replayed"
    assert layout.fallbacks() == []
    assert layout.valid_bytes == _after_real_replay(img, tmp_path)
    assert 18 * MiB < layout.valid_bytes < plain.valid_bytes

    # through a sync: the point holds the valid data after replay and no fallback
    repo = tmp_path / "repo"
    openbdr("repo", "init", str(repo))
    rec = json.loads(openbdr("sync", "-r", str(repo), "-H", "h", str(img), "--json").stdout)
    disk = rec["disks"][0]
    with open(img, "rb") as f:  # a sparse image: its holes are not read either
        present = data_extents(f.fileno(), img.stat().st_size)
    assert disk["valid_bytes"] == total(intersect(present, layout.valid_extents))
    assert disk["fallback_reason"] is None
    assert sha256(img) == before


def test_replay_refused_keeps_the_volume_whole_and_says_why(tmp_path: Path) -> None:
    img = _dirty(tmp_path, "ext4")
    # the journal needs recovery but its superblock is gone: the kernel refuses to mount
    first = int(run(["debugfs", "-R", "bmap <8> 0", str(img)]).stdout.split()[-1])
    head = run(["dumpe2fs", "-h", str(img)]).stdout
    bs = int(next(ln for ln in head.splitlines() if ln.startswith("Block size:")).split()[-1])
    with open(img, "r+b") as f:
        f.seek(first * bs)
        f.write(bytes(bs))
    before = sha256(img)
    repo = tmp_path / "repo"
    openbdr("repo", "init", str(repo))
    rec = json.loads(openbdr("sync", "-r", str(repo), "-H", "h", str(img), "--json").stdout)
    disk = rec["disks"][0]
    assert sha256(img) == before
    with open(img, "rb") as f:
        assert disk["valid_bytes"] == total(data_extents(f.fileno(), img.stat().st_size))
    why = disk["fallback_reason"] or ""
    assert why.startswith("valid data: whole disk: ext4: journal needs recovery"), why
    assert "replay on an overlay failed: mount of ext4" in why, why
    points = json.loads(openbdr("points", "-r", str(repo), "--json").stdout)
    assert points[0]["disk_stats"][0]["fallback_reason"] == why
