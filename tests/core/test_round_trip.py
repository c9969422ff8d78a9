"""Issue 2 acceptance: full + incremental sync of a real file system, restore, compare."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..helpers import loop_device, make_ext4, mounted, openbdr, run, sha256


def _seed_tree(top: Path) -> None:
    (top / "etc").mkdir(parents=True)
    (top / "data").mkdir()
    for i in range(20):
        (top / "etc" / f"conf{i}.txt").write_text(f"setting{i} = {'x' * i}\n" * 200)
    (top / "data" / "random.bin").write_bytes(os.urandom(12 << 20))
    (top / "data" / "text.log").write_bytes(b"GET /index.html 200\n" * 400_000)


def _write_changes(image: Path, mnt: Path, delete: bool) -> None:
    with loop_device(image) as dev, mounted(dev, mnt) as m:
        (m / "data" / "new.bin").write_bytes(os.urandom(5 << 20))
        with open(m / "data" / "text.log", "ab") as f:
            f.write(b"POST /api 201\n" * 100_000)
        if delete:
            os.unlink(m / "data" / "random.bin")
            shutil.rmtree(m / "etc")
    run(["e2fsck", "-fn", str(image)])


def _round_trip(tmp_path: Path, repo: str, extra: list[str], delete: bool) -> None:
    tree = tmp_path / "tree"
    _seed_tree(tree)
    image = make_ext4(tmp_path / "disk.img", 128, tree)
    openbdr("repo", "init", repo)
    openbdr("sync", "-r", repo, "-H", "web01", "-c", "zstd", *extra, str(image))
    ref1 = tmp_path / "ref1.img"
    shutil.copyfile(image, ref1)
    _write_changes(image, tmp_path / "mnt", delete)
    out = openbdr("sync", "-r", repo, "-H", "web01", "-c", "zstd", *extra, str(image))
    assert "hash-compare" in out.stdout
    pts = openbdr("points", "-r", repo, "-H", "web01", "--json")
    import json

    points = json.loads(pts.stdout)
    assert len(points) == 2 and all(p["consistency"] == "crash" for p in points)
    # the incremental stored far less than the full
    assert points[1]["stored_bytes"] < points[0]["stored_bytes"] / 2
    for point, ref in ((points[0]["id"], ref1), (points[1]["id"], image)):
        out_img = tmp_path / f"restored-{point}.img"
        openbdr("restore", "-r", repo, "-H", "web01", "-p", point, "--to", str(out_img))
        assert sha256(out_img) == sha256(ref), f"point {point} differs from its source"
        run(["e2fsck", "-fn", str(out_img)])
    openbdr("verify", "-r", repo, "--deep")


@pytest.mark.root
@pytest.mark.parametrize("mode", ["valid-data", "all-data"])
def test_round_trip_directory(tmp_path: Path, mode: str) -> None:
    # Valid-data syncs skip freed blocks, so byte-identity needs a change that frees none.
    extra = ["--all-data"] if mode == "all-data" else []
    _round_trip(tmp_path, str(tmp_path / "repo"), extra, delete=mode == "all-data")


@pytest.mark.root
@pytest.mark.s3
def test_round_trip_s3(tmp_path: Path, s3_url: str) -> None:
    _round_trip(tmp_path, s3_url, [], delete=False)


def test_restore_to_a_non_empty_target_needs_force(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(3 << 20) + bytes(5 << 20))
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "-r", repo, "-H", "h", "--all-data", str(image))
    target = tmp_path / "target.img"
    target.write_bytes(b"precious")
    proc = openbdr("restore", "-r", repo, "-H", "h", "--to", str(target), check=False)
    assert proc.returncode != 0 and "--force" in proc.stderr
    assert target.read_bytes() == b"precious"
    openbdr("restore", "-r", repo, "-H", "h", "--to", str(target), "--force")
    assert sha256(target) == sha256(image)
    # restored sparse: the zero tail takes no space
    assert os.stat(target).st_blocks * 512 <= 4 << 20


def test_disk_that_grows_and_shrinks(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    versions = []
    for size in (5 * (1 << 20) + 1000, 9 << 20, 2 * (1 << 20) + 7):
        with open(image, "wb") as f:
            f.write(os.urandom(size))
        openbdr("sync", "-r", repo, "-H", "h", "--all-data", str(image))
        versions.append(sha256(image))
    import json

    points = json.loads(openbdr("points", "-r", repo, "--json").stdout)
    for p, want in zip(points, versions, strict=True):
        out = tmp_path / f"{p['id']}.img"
        openbdr("restore", "-r", repo, "-H", "h", "-p", p["id"], "--to", str(out))
        assert sha256(out) == want
    openbdr("verify", "-r", repo, "--deep")


def test_two_syncs_of_one_host_cannot_interleave(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(24 << 20))
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    slow = subprocess.Popen(
        [
            *__import__("tests.helpers", fromlist=["OPENBDR"]).OPENBDR,
            "sync",
            "-r",
            repo,
            "-H",
            "h",
            "--all-data",
            "--bwlimit",
            "4M",
            str(image),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = Path(repo) / "locks" / "host-h.json"
        for _ in range(200):
            if lock.exists():
                break
            __import__("time").sleep(0.05)
        second = openbdr("sync", "-r", repo, "-H", "h", "--all-data", str(image), check=False)
        assert second.returncode == 4 and "already running" in second.stderr
        # another host is not blocked
        openbdr("sync", "-r", repo, "-H", "other", "--all-data", str(image))
    finally:
        slow.kill()
        slow.wait()
