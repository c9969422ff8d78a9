"""The bootable fixture through a gateway: full + incremental points read back identical,
and a VM drill (`run_drill`, fsck included) passes on the older point booted straight from
its snapshot (RBD: QEMU reads the snapshot natively under a throwaway overlay; local
files: NBD over the point reader; no copy of the disk either way)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from openbdr.chunk import Codec
from openbdr.drill.plan import parse_plan
from openbdr.drill.runner import DrillOptions, run_drill
from openbdr.drill.vm import direct_drives
from openbdr.store.block.target import BlockTarget
from openbdr.store.target import WriteOptions

from ..helpers import SHARED
from .conftest import GatewayProc
from .driver import drive, read_back

pytestmark = [pytest.mark.root, pytest.mark.slow]

MAKE_DISK = SHARED / "fixtures" / "make-bootable-disk"
PLAN = """
[drill]
memory = 512
network = "none"
accel = "tcg"
fsck = true

[[probe]]
type = "console"
name = "the older point's marker"
pattern = "marker=block-one"
timeout = 300

[[probe]]
type = "console"
name = "guest ready"
pattern = "OPENBDR-GUEST-READY"
timeout = 120
"""


def _bootable(path: Path, marker: str) -> Path:
    proc = subprocess.run(
        [str(MAKE_DISK), str(path), "--size", "512M", "--marker", marker],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


def test_bootable_points_boot_from_their_snapshot(
    gateway: GatewayProc, backend_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENBDR_STATE_DIR", str(tmp_path / "state"))  # the drill's registry
    img = _bootable(tmp_path / "boot.img", "block-one")
    target = BlockTarget(gateway.url)
    p1 = drive(target, "vm1", [img], WriteOptions(compression=Codec.ZSTD))
    first = img.read_bytes()
    _bootable(tmp_path / "next.img", "block-two")
    shutil.copyfile(tmp_path / "next.img", img)
    p2 = drive(target, "vm1", [img], WriteOptions(compression=Codec.ZSTD))
    assert 0 < p2.disks[0].written_bytes < p1.disks[0].written_bytes
    assert read_back(target, p1) == first
    assert read_back(target, p2) == img.read_bytes()

    # the drill boots the OLDER point while the volume holds the newer one
    reader = target.reader(p1, p1.disks[0])
    direct = direct_drives([reader])
    reader.close()
    if backend_url.startswith("rbd://"):
        assert direct is not None and direct[0].source["snapshot"] == p1.id
    else:
        assert direct is None  # raw + undo journal: served over NBD from the point reader
    said: list[str] = []
    # TCG: KVM here is nested and may fail a real boot its probe passed
    rep = run_drill(target, "vm1", p1.id, parse_plan(PLAN), DrillOptions(say=said.append))
    assert rep.verdict == "passed", (rep.reason, rep.console_tail)
    where = "in place from their snapshots" if direct else "from the repository"
    assert any(where in line for line in said), said
    assert target.point("vm1", p1.id).status == "verified"
    assert read_back(target, p1) == first  # the guest's writes never reached the point
    assert read_back(target, p2) == img.read_bytes()
