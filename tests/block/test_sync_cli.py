"""The real pipeline into a gateway: `openbdr sync --repo gateway://…` full and incremental,
`openbdr restore` of each point byte-identical, `openbdr verify`, a SIGKILLed sync resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from .conftest import OPENBDR, GatewayProc
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
    ext4_write(img, "day2.bin", random.Random(3).randbytes(20 << 20))
    # a sync killed mid-way, then run again: it resumes from the gateway's checkpoint
    proc = subprocess.Popen(
        [
            str(OPENBDR),
            "sync",
            "--repo",
            url,
            "--host",
            "cli1",
            "-c",
            "lz4",
            "--bwlimit",
            "4M",
            "--checkpoint-interval",
            "0.5",
            str(img),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _obdr("sync", "--repo", url, "--host", "cli1", "-c", "lz4", str(img))
    points = [p["point"] for p in json.loads(_obdr("points", "--repo", url, "--json"))]
    assert len(points) == 2
    for pid, want in zip(sorted(points), (v1, img.read_bytes()), strict=True):
        out = tmp_path / f"{pid}.img"
        _obdr("restore", "--repo", url, "--host", "cli1", "--point", pid, "--to", str(out))
        assert out.read_bytes() == want, pid
    assert "OK" in _obdr("verify", "--repo", url)
