"""Fixtures that give tests real infrastructure."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import SHARED, is_root

CEPH = SHARED / "fixtures" / "ceph-cluster"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_root():
        return
    skip = pytest.mark.skip(reason="needs root (loop devices, mounts)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def _read_env(path: str) -> dict[str, str]:
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :]
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v.strip().strip("'\"")
    return env


@pytest.fixture(scope="session")
def ceph() -> Iterator[dict[str, str]]:
    """A throw-away single-node Ceph cluster with an S3 gateway (shared/fixtures)."""
    if not CEPH.exists():
        pytest.fail(f"Ceph fixture missing at {CEPH}")
    base = Path(tempfile.mkdtemp(prefix="openbdr-ceph-"))
    d = base / "cluster"
    proc = subprocess.run([str(CEPH), "start", str(d)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"Ceph fixture failed to start:\n{proc.stderr[-3000:]}")
    env = _read_env(proc.stdout.strip())
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    env["CEPH_DIR"] = str(d)
    try:
        yield env
    finally:
        subprocess.run([str(CEPH), "stop", str(d)], capture_output=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def s3_url(ceph: dict[str, str]) -> str:
    """A fresh bucket prefix on the fixture's S3 gateway (the bucket is created by init)."""
    return f"s3://t-{uuid.uuid4().hex[:12]}/repo"
