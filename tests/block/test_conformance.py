"""The block target passes the target contract's conformance suite, on every backend."""

from __future__ import annotations

import pytest

from openbdr.store.target import open_target

from ..conformance.targets import check_target
from .conftest import GatewayProc


@pytest.mark.parametrize("backend_url", ["file", "rbd", "ebs"], indirect=True)
def test_block_target_conformance(gateway: GatewayProc) -> None:
    target = open_target(gateway.url)  # gateway:// picks the block target kind
    try:
        got = check_target(target)
        # forget kept only the protected point; gc then took the other one's snapshot
        assert [v["snapshots"] for v in target.volumes()] == [[got["p2"].id]]  # type: ignore[attr-defined]
    finally:
        target.close()
