"""Every target passes the target conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbdr.store.memory import drop
from openbdr.store.target import Target, init_target

from .targets import check_target


@pytest.fixture(params=["directory", "memory", "s3", "encrypted"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    kind = request.param
    if kind == "s3":
        request.getfixturevalue("ceph")
        url = f"s3://t-{uuid.uuid4().hex[:12]}/repo"
    elif kind == "memory":
        url = f"memory://{uuid.uuid4().hex}"
    else:
        url = str(tmp_path / "repo")
    t = init_target(url, encrypt=kind == "encrypted", passphrase="pw" if kind == "encrypted" else None)
    yield t
    t.close()
    drop(url)


def test_object_target(target: Target) -> None:
    check_target(target)
