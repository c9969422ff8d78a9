"""The bootable fixture disk on a Cinder RBD volume: synced agentlessly (full, then an
incremental while the "guest" writes), its latest point boots in a VM drill."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import SHARED, openbdr
from .conftest import Stack, write
from .helpers import init_repo, run_sync, spec

pytestmark = [pytest.mark.s3, pytest.mark.root, pytest.mark.slow]

MAKE_DISK = SHARED / "fixtures" / "make-bootable-disk"
MIB = 1 << 20

PLAN = """
[drill]
memory = 512
network = "none"

[[probe]]
type = "console"
pattern = "OPENBDR-GUEST-READY"
timeout = 300
"""


@pytest.fixture
def drill_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    d = tempfile.mkdtemp(prefix="obt-")  # short: unix socket paths stay under 108 bytes
    monkeypatch.setenv("TMPDIR", d)
    yield {**os.environ, "TMPDIR": d, "OPENBDR_STATE_DIR": str(tmp_path / "state")}
    shutil.rmtree(d, ignore_errors=True)


def test_drill_of_a_point_read_from_rbd(fresh: Stack, tmp_path: Path,
                                        drill_env: dict[str, str]) -> None:
    img = tmp_path / "boot.img"
    proc = subprocess.run([str(MAKE_DISK), str(img), "--size", "512M", "--marker",
                           "rbd-marker-15"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cloud = fresh.cloud
    vol = cloud.add_volume("root", 1, fresh.project, bootable=True)
    with open(img, "rb") as f:
        off = 0
        while chunk := f.read(4 * MIB):
            if chunk.count(0) != len(chunk):
                write(cloud, vol.id, off, chunk)
            off += len(chunk)
    server = cloud.add_server("bootvm", fresh.project, fresh.user.id, [vol])
    repo = init_repo(tmp_path / "repo")
    src = spec(fresh, server)
    full = run_sync(repo, "bootvm", src)
    assert full.disks[0].layout is not None  # MBR + ext4 found: only used blocks read
    assert full.disks[0].read_bytes < 200 * MIB
    rng = random.Random(3)
    for _ in range(5):  # the running guest writes past its partition's end
        write(cloud, vol.id, 600 * MIB + rng.randrange(0, 300 * MIB), rng.randbytes(65536))
    point = run_sync(repo, "bootvm", src)
    assert point.disks[0].mode == "incremental"

    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    # nested kvm_pvm runs the KVM probe sector but hangs BIOS Linux guests: TCG there
    accel = ["--accel", "tcg"] if os.path.isdir("/sys/module/kvm_pvm") else []
    out = openbdr("drill", "run", "--repo", str(repo), "--host", "bootvm", "--point",
                  "latest", "--plan", str(plan), *accel, "--json", env=drill_env,
                  timeout=900)
    rep = json.loads(out.stdout)
    assert rep["verdict"] == "passed", rep
    assert "marker=rbd-marker-15" in rep["console_tail"]
