"""A host's lease outlives a gateway restart: the gateway SIGKILLed and restarted in the
middle of a sync still refuses a second sync of that host, refuses to forget the running
sync's base, and its gc spares the host; the first sync then completes identical."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from openbdr.errors import LockedError
from openbdr.store.block.target import BlockTarget
from openbdr.store.target import WriteOptions

from .conftest import GatewayProc
from .driver import drive, read_back
from .images import ext4_image, ext4_write


@pytest.mark.parametrize("backend_url", ["file"], indirect=True)  # backend-blind
def test_a_lease_survives_a_gateway_restart(gateway: GatewayProc, tmp_path: Path) -> None:
    img = ext4_image(tmp_path / "disk.img", 32, seed=9)
    target = BlockTarget(gateway.url)
    p1 = drive(target, "h1", [img])
    v1 = img.read_bytes()
    ext4_write(img, "day2.bin", os.urandom(6 << 20))
    checked: list[int] = []

    def mid_sync(n: int) -> None:
        if n != 12 or checked:
            return
        gateway.kill()
        gateway.start()
        saved = json.loads((gateway.root / "state" / "leases.json").read_text())
        assert list(saved["leases"]) == ["h1"]
        other = BlockTarget(gateway.url)
        with pytest.raises(LockedError, match="already running"):
            other.begin("h1", WriteOptions())
        with pytest.raises(LockedError, match="base of a running sync"):
            other.forget([p1])
        rep = other.gc()
        assert rep.young >= 1 and rep.deleted == 0, rep
        assert [v["snapshots"] for v in other.volumes()] == [[p1.id]]
        other.close()
        checked.append(n)

    p2 = drive(target, "h1", [img], on_block=mid_sync)
    assert checked and p2.parent == p1.id
    assert read_back(target, p1) == v1
    assert read_back(target, p2) == img.read_bytes()
    # the sync ended: its lease is gone from the file too, another sync may start
    assert json.loads((gateway.root / "state" / "leases.json").read_text())["leases"] == {}
    gateway.kill()
    gateway.start()
    ext4_write(img, "day3.bin", os.urandom(1 << 20))
    p3 = drive(BlockTarget(gateway.url), "h1", [img])
    assert read_back(target, p3) == img.read_bytes()
