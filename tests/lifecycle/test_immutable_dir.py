"""Immutable restore points in a local directory: the file system's immutable attribute.

On a real ext4 file system on a loop device: once a point is committed, even root's plain
`rm`/`os.remove`/rename/overwrite of its chunks, indexes and manifest fail with EPERM, and
`forget`/`gc` keep it until its date; syncs, verify (marking damage), repair and gc work
on the locked files; a lock a crash lost is put back by gc; after the date gc clears the
attribute and retention removes the point.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from openbdr.store import fsattr

from ..helpers import OPENBDR, is_root, loop_device, make_ext4, mounted, openbdr, sha256

MIB = 1 << 20
#: the lock period of the expiry test: short enough to wait out (chunks are retained
#: twice as long), long enough for one gc between the point's date and its chunks'
LOCK_S = 10.0

#: the CLI as root without CAP_LINUX_IMMUTABLE (a confined service)
NOCAP = ["setpriv", "--bounding-set=-linux_immutable", "--inh-caps=-all", *OPENBDR]

pytestmark = pytest.mark.skipif(not is_root(), reason="loop devices and chattr need root")


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    image = make_ext4(tmp_path / "fs.img", 96)
    with loop_device(image) as dev, mounted(dev, tmp_path / "mnt") as mp:
        yield mp


def _objects(repo: Path) -> list[Path]:
    return [p for top in ("chunks", "indexes", "points") for p in (repo / top).rglob("*")
            if p.is_file()]


def _eperm(fn: object, *args: object) -> None:
    with pytest.raises(PermissionError) as exc:
        fn(*args)  # type: ignore[operator]
    assert exc.value.errno == errno.EPERM


def _two_points(repo: Path, image: Path, mib: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Two points of host db1 (the second changes one block): their records and the
    image's SHA-256 at each."""
    data = bytearray(os.urandom(mib * MIB))
    shas = []
    for k in range(2):
        if k:
            data[MIB : 2 * MIB] = os.urandom(MIB)
        image.write_bytes(data)
        openbdr("sync", "-r", str(repo), "-H", "db1", "--all-data", str(image))
        shas.append(sha256(image))
    return json.loads(openbdr("points", "-r", str(repo), "--json").stdout), shas


def test_init_refuses_what_cannot_lock(tmp_path: Path, ext4: Path) -> None:
    # a file system without the attribute (ramfs), in one line, nothing created
    with mounted("none", tmp_path / "ramfs", fstype="ramfs") as mp:
        proc = openbdr("repo", "init", str(mp / "repo"), "--object-lock", check=False)
        assert proc.returncode != 0, proc.stdout
        assert "cannot make files immutable" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not any((mp / "repo").iterdir())
    # compliance mode is a promise a directory cannot keep
    proc = openbdr("repo", "init", str(ext4 / "c"), "--object-lock", "--lock-mode",
                   "compliance", check=False)
    assert proc.returncode != 0 and "cannot lock in compliance mode" in proc.stderr
    # root without CAP_LINUX_IMMUTABLE (a confined service) is told what it lacks
    proc = subprocess.run([*NOCAP, "repo", "init", str(ext4 / "nocap"), "--object-lock"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "needs root (CAP_LINUX_IMMUTABLE)" in proc.stderr
    # nor can such a process sync into a locked repository: one line, no point
    repo = ext4 / "repo"
    openbdr("repo", "init", str(repo), "--object-lock")
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(2 * MIB))
    proc = subprocess.run(
        [*NOCAP, "sync", "-r", str(repo), "-H", "db1", "--all-data", str(image)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 7 and "needs root (CAP_LINUX_IMMUTABLE)" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert json.loads(openbdr("points", "-r", str(repo), "--json").stdout) == []
    openbdr("sync", "-r", str(repo), "-H", "db1", "--all-data", str(image))
    assert len(json.loads(openbdr("points", "-r", str(repo), "--json").stdout)) == 1


def test_locked_points_survive_root(tmp_path: Path, ext4: Path) -> None:
    repo = ext4 / "repo"
    out = openbdr("repo", "init", str(repo), "--object-lock", "--lock-days", "1").stdout
    assert "GOVERNANCE" in out
    image = tmp_path / "disk.img"
    points, (first_sha, second_sha) = _two_points(repo, image, 6)
    first, second = (p["id"] for p in points)

    objects = _objects(repo)
    manifest = repo / "points" / "db1" / f"{first}.json"
    index = repo / "indexes" / first / "0"
    chunk = next(p for p in objects if "chunks" in p.parts)
    assert manifest in objects and index in objects and len(objects) >= 10
    for p in [*objects, repo / "config"]:  # every object a point needs, with its date
        assert fsattr.is_immutable(p), p
        assert fsattr.retain_until(p) is not None
    lsattr = subprocess.run(["lsattr", str(manifest)], capture_output=True, text=True).stdout
    assert "i" in lsattr.split()[0]

    # root as an attacker would: plain calls and commands, all refused
    for p in (chunk, index, manifest):
        _eperm(os.remove, p)
        _eperm(os.rename, p, p.with_name("x"))
        _eperm(open, p, "r+b")
        _eperm(os.setxattr, p, fsattr.XATTR, b"2000-01-01T00:00:00+00:00")
    assert subprocess.run(["rm", "-f", str(manifest)], capture_output=True).returncode != 0
    assert subprocess.run(["rm", "-rf", str(repo)], capture_output=True).returncode != 0
    assert manifest.exists() and chunk.exists() and index.exists()

    # forget and gc before the date: the point is kept
    out = openbdr("forget", "-r", str(repo), "--keep-last", "1").stdout
    assert f"keep   db1 {first}" in out and "locked" in out
    openbdr("gc", "-r", str(repo), "--margin", "0")
    assert manifest.exists()
    assert [p["id"] for p in json.loads(openbdr("points", "-r", str(repo), "--json").stdout)] \
        == [first, second]
    restored = tmp_path / "first.img"
    openbdr("restore", "-r", str(repo), "-H", "db1", "-p", first, "--to", str(restored))
    assert sha256(restored) == first_sha

    # a full pass stores every chunk again over the locked ones (they stay locked)
    openbdr("sync", "-r", str(repo), "-H", "db1", "--all-data", "--full", str(image))
    assert fsattr.is_immutable(chunk)
    third = json.loads(openbdr("points", "-r", str(repo), "--json").stdout)[-1]["id"]

    # verify marks damage on a locked manifest; repair rebuilds a locked manifest
    fsattr.set_immutable(chunk, False)  # root's attacker, who can clear the attribute
    good = chunk.read_bytes()
    chunk.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    proc = openbdr("verify", "-r", str(repo), "--deep", check=False)
    assert proc.returncode != 0
    assert {p["status"] for p in json.loads(
        openbdr("points", "-r", str(repo), "--json").stdout)} >= {"damaged"}
    assert fsattr.is_immutable(manifest)
    chunk.write_bytes(good)
    openbdr("verify", "-r", str(repo), "--deep")  # the scrub clears the marks
    second_manifest = repo / "points" / "db1" / f"{second}.json"
    fsattr.set_immutable(second_manifest, False)
    second_manifest.write_bytes(b"{ransom")
    fsattr.set_immutable(second_manifest, True)
    out = openbdr("repo", "repair", "-r", str(repo)).stdout
    assert "rebuilt" in out and fsattr.is_immutable(second_manifest)

    # a crash between write and lock: gc locks what a committed point needs
    third_manifest = repo / "points" / "db1" / f"{third}.json"
    third_index = repo / "indexes" / third / "0"
    for p in (third_manifest, third_index, chunk):
        fsattr.set_immutable(p, False)
    rep = json.loads(openbdr("gc", "-r", str(repo), "--margin", "0", "--json").stdout)
    assert rep["relocked"] >= 3
    assert all(fsattr.is_immutable(p) for p in (third_manifest, third_index, chunk))
    _eperm(os.remove, third_manifest)

    for pid, sha in ((second, second_sha), (third, second_sha)):
        out_img = tmp_path / f"{pid}.img"
        openbdr("restore", "-r", str(repo), "-H", "db1", "-p", pid, "--to", str(out_img))
        assert sha256(out_img) == sha
    openbdr("verify", "-r", str(repo), "--deep")


def test_locks_expire_then_retention_and_gc_remove(tmp_path: Path, ext4: Path) -> None:
    repo = ext4 / "repo"
    days = f"{LOCK_S / 86400:.8f}"
    openbdr("repo", "init", str(repo), "--object-lock", "--lock-days", days)
    image = tmp_path / "disk.img"
    points, (_, second_sha) = _two_points(repo, image, 4)
    first, second = (p["id"] for p in points)
    first_until = datetime.fromisoformat(points[0]["locked_until"]).timestamp()
    manifest = repo / "points" / "db1" / f"{first}.json"
    index = repo / "indexes" / first / "0"
    assert fsattr.is_immutable(manifest) and fsattr.is_immutable(index)

    # after the point's date: forget removes it (the attribute cleared on the way)
    time.sleep(max(0.0, first_until + 0.5 - time.time()))
    out = openbdr("forget", "-r", str(repo), "--keep-last", "1").stdout
    assert f"forget db1 {first}" in out
    assert not manifest.exists() and not index.exists()
    # the block the second point changed was the first point's alone: unreferenced now,
    # but retained until commit + 2N, so gc skips it and says so
    chunks = sorted((repo / "chunks").rglob("*"))
    rep = json.loads(openbdr("gc", "-r", str(repo), "--margin", "0", "--json").stdout)
    assert rep["locked"] >= 1 and rep["deleted"] == 0, rep
    assert sorted((repo / "chunks").rglob("*")) == chunks
    # after the chunks' date: gc clears every expired lock and deletes that chunk
    time.sleep(max(0.0, first_until + LOCK_S + 1 - time.time()))
    rep = json.loads(openbdr("gc", "-r", str(repo), "--margin", "0", "--json").stdout)
    assert rep["unlocked"] >= 1 and rep["locked"] == 0 and rep["deleted"] >= 1, rep
    out_img = tmp_path / "second.img"
    openbdr("restore", "-r", str(repo), "-H", "db1", "-p", second, "--to", str(out_img))
    assert sha256(out_img) == second_sha
    openbdr("verify", "-r", str(repo), "--deep")
