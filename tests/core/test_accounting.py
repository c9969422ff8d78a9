"""Byte accounting that adds up (issue 18): what `inspect` says a sync reads is what the
sync reports as valid; a full pass reads exactly that; stored never exceeds read, since
the padding around valid data in a partly used block is not stored as data."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ..helpers import openbdr


@pytest.mark.root
def test_inspect_and_sync_agree_and_stored_never_exceeds_read(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "48M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    # a few small files scattered over the file system: many partly used blocks
    subprocess.run(
        ["debugfs", "-w", "-R", "mkdir d", str(img)], check=True, capture_output=True
    )
    for i in range(12):
        src = tmp_path / f"f{i}"
        src.write_bytes(os.urandom(3000 + 7919 * i))
        subprocess.run(["debugfs", "-w", "-R", f"write {src} d/f{i}", str(img)], check=True,
                       capture_output=True)
    said = json.loads(openbdr("inspect", "--json", str(img)).stdout)
    repo = tmp_path / "repo"
    openbdr("repo", "init", str(repo))
    point = json.loads(openbdr("sync", "-r", str(repo), "-H", "a", "--json", str(img)).stdout)
    disk = point["disks"][0]
    assert disk["valid_bytes"] == said["sync_valid_bytes"] > 0
    assert disk["read_bytes"] == disk["valid_bytes"]  # a full pass reads the valid data
    assert 0 < disk["stored_bytes"] <= disk["read_bytes"], disk
