"""Teardown is total (20 drills in a row), and `openbdr mount` gives read-only files."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from openbdr.drill.accel import boot_sector

from ..helpers import OPENBDR, make_ext4, openbdr, sha256, tree_checksums
from .leaks import leaked, snapshot

pytestmark = [pytest.mark.root]

TINY_PLAN = """
[drill]
memory = 64
network = "none"

[[probe]]
type = "console"
pattern = "OK"
timeout = 120
"""


def test_twenty_drills_in_a_row_leave_nothing_behind(tmp_path: Path, state_dir: Path) -> None:
    """A tiny guest (a boot sector that prints OK) keeps each drill short under TCG."""
    disk = tmp_path / "tiny.img"
    with open(disk, "wb") as f:
        f.write(boot_sector())
        f.truncate(1 << 20)
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "--all-data", "--repo", repo, "--host", "tiny", str(disk))
    plan = tmp_path / "plan.toml"
    plan.write_text(TINY_PLAN)
    env = {**os.environ, "OPENBDR_STATE_DIR": str(state_dir)}
    before = snapshot(os.environ["TMPDIR"])
    ids = set()
    for _ in range(20):
        proc = openbdr(
            "drill",
            "run",
            "--repo",
            repo,
            "--host",
            "tiny",
            "--plan",
            str(plan),
            "--json",
            env=env,
            timeout=300,
        )
        rep = json.loads(proc.stdout)
        assert rep["verdict"] == "passed", rep
        assert rep["screenshot"] == "screenshot.png"
        ids.add(rep["id"])
        assert leaked(before, snapshot(os.environ["TMPDIR"])) == {}
    assert len(ids) == 20
    assert not list((state_dir / "drills").glob("*"))
    listed = json.loads(openbdr("drill", "list", "--repo", repo, "--json").stdout)
    assert {x["id"] for x in listed} == ids


def test_mount_gives_the_point_files_read_only(tmp_path: Path, state_dir: Path) -> None:
    content = tmp_path / "content"
    (content / "etc").mkdir(parents=True)
    (content / "etc" / "hostname").write_text("restored-host\n")
    (content / "big.bin").write_bytes(os.urandom(3 << 20))
    img = make_ext4(tmp_path / "fs.img", 64, content)
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "--all-data", "--repo", repo, "--host", "fs1", str(img))
    before_img = sha256(img)
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {**os.environ, "OPENBDR_STATE_DIR": str(state_dir)}
    before = snapshot(os.environ["TMPDIR"])
    proc = subprocess.Popen(
        [*OPENBDR, "mount", "--repo", repo, "--host", "fs1", str(mp)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mp):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "mount did not appear"
            time.sleep(0.1)
        assert tree_checksums(mp) == tree_checksums(content)
        with pytest.raises(OSError):
            (mp / "etc" / "hostname").write_text("changed")
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert not os.path.ismount(mp)
    assert leaked(before, snapshot(os.environ["TMPDIR"])) == {}
    assert sha256(img) == before_img
    bad = openbdr("mount", "--repo", repo, "--host", "fs1", str(tmp_path / "missing"), check=False)
    assert bad.returncode == 1 and "is not a directory" in bad.stderr
