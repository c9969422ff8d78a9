"""`openbdr copy` from block mode to object mode: points of a gateway (volume snapshots)
read through the block target's `PointReader` and stored as chunks in a repository;
restored byte-identically from there, and a re-run copies nothing."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from .conftest import OPENBDR, GatewayProc
from .images import ext4_image, ext4_write


def _obdr(*args: str) -> str:
    proc = subprocess.run([str(OPENBDR), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("backend_url", ["file"], indirect=True)  # the reader is backend-blind
def test_copy_gateway_points_to_an_object_repository(
    gateway: GatewayProc, tmp_path: Path
) -> None:
    img = ext4_image(tmp_path / "disk.img", 48, seed=31)
    rnd = random.Random(31)
    images: dict[str, bytes] = {}
    for n in range(3):
        if n:
            ext4_write(img, f"day{n}.bin", rnd.randbytes(6 << 20))
        _obdr("sync", "--repo", gateway.url, "--host", "gw1", "-c", "zstd", str(img))
        pid = json.loads(_obdr("points", "--repo", gateway.url, "--json"))[-1]["id"]
        images[pid] = img.read_bytes()
    repo = tmp_path / "offsite"
    _obdr("repo", "init", str(repo))

    def copy() -> dict[str, object]:
        out = _obdr("copy", "--from", gateway.url, "--to", str(repo), "-H", "gw1", "--json")
        return json.loads(out)["hosts"][0]  # type: ignore[no-any-return]

    first = copy()
    assert first["copied"] == list(images) and not first["failed"]
    assert first["verified_blocks"] > 0
    copies = json.loads(_obdr("points", "--repo", str(repo), "--json"))
    assert [p["id"] for p in copies] == list(images)
    for pid, want in images.items():
        out = tmp_path / f"{pid}.img"
        _obdr("restore", "--repo", str(repo), "--host", "gw1", "--point", pid, "--to", str(out))
        assert out.read_bytes() == want, f"copy of {pid} restored differently"
        out.unlink()
    again = copy()
    assert again["copied"] == [] and again["blocks_read"] == 0 and again["chunks_stored"] == 0
    # a new point at the gateway: only the blocks that changed since the newest copy are read
    ext4_write(img, "day3.bin", rnd.randbytes(3 << 20))
    _obdr("sync", "--repo", gateway.url, "--host", "gw1", "-c", "zstd", str(img))
    inc = copy()
    assert len(inc["copied"]) == 1  # type: ignore[arg-type]
    assert 0 < inc["blocks_read"] < first["blocks_read"] / 3  # type: ignore[operator]
    out = tmp_path / "inc.img"
    _obdr("restore", "--repo", str(repo), "--host", "gw1", "--to", str(out))
    assert out.read_bytes() == img.read_bytes()
    assert [p["copy_of"] for p in json.loads(_obdr("points", "--repo", str(repo), "--json"))] \
        == [*images, inc["copied"][0]]  # type: ignore[index]
    assert "OK" in _obdr("verify", "--repo", str(repo), "--deep")
