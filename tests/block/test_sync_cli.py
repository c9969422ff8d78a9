"""The real pipeline into a gateway: `openbdr sync --repo gateway://…` full and incremental,
the sending process SIGKILLed at 10 moments and resumed, `openbdr restore` of each point
byte-identical, `openbdr verify`."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from openbdr.store.block.target import BlockTarget

from .conftest import OPENBDR, GatewayProc
from .driver import read_back
from .images import ext4_image, ext4_write


def _obdr(*args: str) -> str:
    proc = subprocess.run([str(OPENBDR), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_openbdr_sync_restore_verify_through_a_gateway(
    gateway: GatewayProc, tmp_path: Path
) -> None:
    img = ext4_image(tmp_path / "disk.img", 64, seed=21)
    url = gateway.url
    _obdr("sync", "--repo", url, "--host", "cli1", "-c", "zstd", str(img))
    v1 = img.read_bytes()
    ext4_write(img, "day2.bin", random.Random(3).randbytes(40 << 20))
    target = BlockTarget(url)
    [p1] = target.points("cli1")
    # the sending process SIGKILLed at 10 moments; each run resumes from the checkpoint
    # the last one left on the gateway (slowed to 3 MiB/s so that every kill lands mid-sync)
    rnd = random.Random(5)
    cmd = [
        str(OPENBDR),
        "sync",
        "--repo",
        url,
        "--host",
        "cli1",
        "-c",
        "lz4",
        "--bwlimit",
        "3M",
        "--checkpoint-interval",
        "0.3",
        str(img),
    ]
    for _ in range(10):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(1.5, 3.0))
        assert proc.poll() is None, "the sync finished before its kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert [p.id for p in target.points("cli1")] == [p1.id]
        assert read_back(target, p1) == v1
    last = json.loads(
        _obdr("sync", "--repo", url, "--host", "cli1", "-c", "lz4", "--json", str(img))
    )["disks"][0]
    assert last["read_bytes"] < last["valid_bytes"], "the last run resumed: it skipped done blocks"
    points = [p["id"] for p in json.loads(_obdr("points", "--repo", url, "--json"))]
    assert len(points) == 2
    for pid, want in zip(sorted(points), (v1, img.read_bytes()), strict=True):
        out = tmp_path / f"{pid}.img"
        _obdr("restore", "--repo", url, "--host", "cli1", "--point", pid, "--to", str(out))
        assert out.read_bytes() == want, pid
    assert "OK" in _obdr("verify", "--repo", url)


@pytest.mark.parametrize("backend_url", ["file"], indirect=True)  # backend-blind
def test_bytes_on_the_wire_match_object_mode(gateway: GatewayProc, tmp_path: Path) -> None:
    """With compression on, block mode sends what object mode stores (the same envelopes),
    and writes the decompressed valid data: storage exceeds transfer in block mode only."""
    img = ext4_image(tmp_path / "disk.img", 64, seed=22)
    repo = tmp_path / "repo"
    _obdr("repo", "init", str(repo))
    obj = json.loads(
        _obdr("sync", "--repo", str(repo), "--host", "w1", "-c", "zstd", "--json", str(img))
    )["disks"][0]
    blk = json.loads(
        _obdr("sync", "--repo", gateway.url, "--host", "w1", "-c", "zstd", "--json", str(img))
    )["disks"][0]
    assert obj["written_bytes"] == 0 < obj["stored_bytes"]
    # object mode stores a block seen twice once; block mode writes it at both places
    assert obj["stored_bytes"] <= blk["stored_bytes"] <= obj["stored_bytes"] * 1.05
    assert blk["written_bytes"] > blk["stored_bytes"]  # decompressed at the DR site
    assert blk["written_bytes"] <= blk["size"]  # whole blocks of the valid data
    # `openbdr points --json` reports both per point, whatever the mode
    [row] = json.loads(_obdr("points", "--repo", gateway.url, "--json"))
    assert (row["stored_bytes"], row["written_bytes"]) == (
        blk["stored_bytes"],
        blk["written_bytes"],
    )
    [orow] = json.loads(_obdr("points", "--repo", str(repo), "--json"))
    assert (orow["stored_bytes"], orow["written_bytes"]) == (obj["stored_bytes"], 0)
