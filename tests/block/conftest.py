"""Block-mode fixtures: a volume store per backend (local files, real Ceph RBD)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbdr.store.block.volumes import VolumeStore, open_store

from ..conftest import _read_env


@pytest.fixture(scope="session")
def rbd_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """A running cluster's env file in $OPENBDR_CEPH_ENV (reused), else the session's cluster."""
    path = os.environ.get("OPENBDR_CEPH_ENV")
    if path:
        env = _read_env(path)
        os.environ.update(env)
        return env
    env: dict[str, str] = request.getfixturevalue("ceph")
    return env


@pytest.fixture(params=["file", "rbd"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty volume store of each backend."""
    if request.param == "file":
        yield f"file://{tmp_path / 'volumes'}"
        return
    env = request.getfixturevalue("rbd_env")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    url = f"rbd://{env.get('RBD_POOL', 'rbd')}?prefix={prefix}&conf={env['CEPH_CONF']}"
    yield url
    store = open_store(url)
    for name in store.names():
        store.delete(name)
    store.close()


@pytest.fixture
def store(backend_url: str) -> Iterator[VolumeStore]:
    s = open_store(backend_url)
    yield s
    s.close()
