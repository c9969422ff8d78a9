"""A block-mode target's volumes in the control plane and the console: a gateway on
loopback holding a point, registered as a target; `GET /targets/NAME/volumes` and the
targets page list its volume with size, snapshot and bytes written and carried."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from openbdr.chunk import Codec
from openbdr.store.block.target import BlockTarget
from openbdr.store.target import WriteOptions

from ..block.conftest import GatewayProc
from ..block.driver import drive
from ..control.conftest import ServerProc
from .conftest import api

MiB = 1 << 20


def test_gateway_volumes_in_the_api_and_the_console(
    console_factory: Any, server: ServerProc, tmp_path: Path
) -> None:
    gw = GatewayProc(tmp_path / "gw", f"file://{tmp_path / 'volumes'}")
    try:
        img = tmp_path / "sda"
        with open(img, "wb") as f:  # text compresses on the wire; a zero tail is never sent
            f.write(b"".join(b"line %d of the gateway disk\n" % i for i in range(200_000)))
            f.write(os.urandom(2 * MiB))
            f.truncate(12 * MiB)
        point = drive(BlockTarget(gw.url), "vol1", [img], WriteOptions(compression=Codec.ZSTD))
        disk = point.disks[0]
        assert 0 < disk.stored_bytes < disk.written_bytes
        with api(server) as c:
            r = c.post(
                "/targets",
                json={
                    "name": "dr-gw",
                    "url": gw.url.split("&token_file=")[0],
                    "secrets": {"OPENBDR_GATEWAY_TOKEN": gw.token_file.read_text().strip()},
                },
            )
            assert r.status_code == 201, r.text
            r = c.get("/targets/dr-gw/volumes")
            assert r.status_code == 200, r.text
            assert r.json() == [
                {
                    "volume": "vol1--sda",
                    "host": "vol1",
                    "size": 12 * MiB,
                    "snapshots": [point.id],
                    "written_bytes": disk.written_bytes,
                    "stored_bytes": disk.stored_bytes,
                }
            ]
            bad = c.get("/targets/dr/volumes")  # the module's object repository
            assert bad.status_code == 400 and "no volumes" in bad.text
        tab = console_factory()
        tab.login_token(server.token)
        tab.go("#/settings/targets", "#volumes-dr-gw tr[data-volume='vol1--sda']")
        row = tab.page.locator("#volumes-dr-gw tr[data-volume='vol1--sda']").inner_text()
        assert "vol1" in row and "12 MiB" in row and point.id in row, row
        assert tab.page.locator("#volumes-dr").count() == 0  # object mode: no volumes card
        tab.shot("settings-target-volumes")
    finally:
        gw.stop()
