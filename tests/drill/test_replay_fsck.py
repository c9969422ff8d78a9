"""Drills let a file system recover before they judge it: each volume is mounted on the
drill's overlay (XFS replays its log, ext4 its journal), then `fsck -n`; a really
damaged file system still fails, with the checker's reasons in the report."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from openbdr.drill.checks import reasons

from ..helpers import loop_device, make_ext4, mounted, openbdr, run, sha256
from .leaks import leaked, snapshot

MiB = 1 << 20

PLAN = """
[drill]
kind = "service"
timeout = 120

[service]
type = "command"
command = ["sleep", "600"]

[[probe]]
type = "file"
name = "data file"
path = "data/f0"
"""


def _dirty(tmp_path: Path, kind: str) -> Path:
    """An image copied while mounted after writes: its log or journal needs replay."""
    img = tmp_path / f"{kind}.img"
    if kind == "xfs":
        with open(img, "wb") as f:
            f.truncate(300 * MiB)
        run(["mkfs.xfs", "-q", str(img)])
    else:
        make_ext4(img, 128)
    out = tmp_path / f"{kind}-dirty.img"
    with loop_device(img) as dev, mounted(dev, tmp_path / "m") as mnt:
        (mnt / "data").mkdir()
        for i in range(4):
            (mnt / "data" / f"f{i}").write_bytes(os.urandom(2 * MiB))
        run(["sync"])
        run(["cp", "--sparse=always", str(img), str(out)])
    return out


def _drill(tmp_path: Path, img: Path, state_dir: Path) -> tuple[int, dict]:
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "--repo", repo, "--host", "h1", str(img))
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    env = {**os.environ, "OPENBDR_STATE_DIR": str(state_dir)}
    proc = openbdr("drill", "run", "--repo", repo, "--host", "h1", "--plan", str(plan),
                   "--json", check=False, env=env, timeout=300)  # fmt: skip
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.root
@pytest.mark.slow
def test_xfs_point_with_a_log_to_replay_passes_fsck(tmp_path: Path, state_dir: Path) -> None:
    img = _dirty(tmp_path, "xfs")
    as_is = subprocess.run(["xfs_repair", "-n", str(img)], capture_output=True)
    assert as_is.returncode != 0  # not judged as it is: its log needs replay
    before = snapshot(os.environ["TMPDIR"])
    rc, rep = _drill(tmp_path, img, state_dir)
    assert rep["verdict"] == "passed", json.dumps(rep, indent=1)
    assert rc == 0
    fsck = [c for c in rep["checks"] if c["type"] == "fsck"]
    assert len(fsck) == 1 and fsck[0]["ok"], fsck
    assert fsck[0]["detail"].startswith("after log replay on mount; clean"), fsck
    assert leaked(before, snapshot(os.environ["TMPDIR"])) == {}


@pytest.mark.root
@pytest.mark.slow
def test_really_damaged_file_system_fails_with_the_reason(tmp_path: Path, state_dir: Path) -> None:
    content = tmp_path / "content"
    (content / "data").mkdir(parents=True)
    (content / "data" / "f0").write_bytes(os.urandom(MiB))
    img = make_ext4(tmp_path / "bad.img", 64, content)
    # the root directory's inode is gone (no journal to bring it back)
    run(["debugfs", "-w", "-R", "clri <2>", str(img)])
    digest = sha256(img)
    rc, rep = _drill(tmp_path, img, state_dir)
    assert rc == 3 and rep["verdict"] == "failed", json.dumps(rep, indent=1)
    fsck = next(c for c in rep["checks"] if c["type"] == "fsck")
    assert not fsck["ok"]
    assert "did not mount" in fsck["detail"], fsck
    assert "Root inode" in fsck["detail"], fsck  # e2fsck's reason, not its last lines
    assert "Root inode" in rep["reason"], rep["reason"]
    assert sha256(img) == digest


def test_reasons_are_the_lines_that_say_why() -> None:
    out = """Phase 1 - find and verify superblock...
Phase 2 - using internal log
        - zero log...
ERROR: The filesystem has valuable metadata changes in a log which needs to
be replayed.  Mount the filesystem to replay the log, and unmount it before
re-running xfs_repair.
        - scan filesystem freespace and inode maps...
Phase 7 - verify link counts...
No modify flag set, skipping filesystem flush and exiting.
"""
    why = reasons(out)
    assert why.startswith("ERROR: The filesystem has valuable metadata changes"), why
    assert "Phase 7" not in why and "No modify flag" not in why
    e2 = "Pass 1: Checking inodes, blocks, and sizes\nRoot inode is not a directory.  Clear? no\n"
    assert reasons(e2) == "Root inode is not a directory.  Clear? no"
    assert reasons("Phase 1 - x\nNo modify flag set") == "Phase 1 - x | No modify flag set"
