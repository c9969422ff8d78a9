"""Fixtures for drill tests: small repositories holding real images."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import openbdr

ODD_SIZE = 20 * (1 << 20) + 25 * 512  # short last block (whole sectors: QEMU needs them)


def make_image(path: Path, size: int = ODD_SIZE) -> Path:
    """Random data, a zero stretch, a hole, and a short tail block."""
    rnd = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.truncate(size)
        for mib in (0, 1, 2, 7, 19):
            f.seek(mib << 20)
            f.write(rnd[mib * 1000 :] + rnd[: mib * 1000])
        f.seek(5 << 20)
        f.write(bytes(1 << 20))  # explicit zeros: stored as a zero block
        f.seek(size - 5000)
        f.write(os.urandom(5000))
    return path


@pytest.fixture
def scope(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short private TMPDIR: drills started by the test keep their files, sockets and
    mounts below it, so leak checks count only this test's (unix socket paths must stay
    under 108 bytes, hence not below tmp_path)."""
    d = tempfile.mkdtemp(prefix="obt-")
    os.chmod(d, 0o711)  # service drills run PostgreSQL as its own user below it
    monkeypatch.setenv("TMPDIR", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def state_dir(tmp_path: Path, scope: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private drill state dir (orphan registry, KVM verdict cache) per test."""
    d = tmp_path / "state"
    monkeypatch.setenv("OPENBDR_STATE_DIR", str(d))
    return d


@pytest.fixture
def small_repo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(repository url, original image) with one restore point of host `h1`."""
    img = make_image(tmp_path / "disk.img")
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "--all-data", "--repo", repo, "--host", "h1", str(img))
    yield repo, img
