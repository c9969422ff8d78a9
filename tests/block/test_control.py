"""The control plane takes a gateway as a target: `POST /targets` with a gateway:// URL (the
agent token as a target secret), a refresh mirrors its points into the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openbdr.control.app import ServerConfig, create_app
from openbdr.store.block.target import BlockTarget

from .conftest import GatewayProc
from .driver import drive
from .images import ext4_image


@pytest.mark.parametrize("backend_url", ["file"], indirect=True)  # backend-blind
def test_gateway_target_in_the_control_plane(gateway: GatewayProc, tmp_path: Path) -> None:
    img = ext4_image(tmp_path / "disk.img", 24, seed=12)
    point = drive(BlockTarget(gateway.url), "web1", [img])
    data = tmp_path / "data"
    app = create_app(
        ServerConfig(data, f"sqlite:///{tmp_path / 'catalog.db'}", workers=0, scheduler=False)
    )
    admin = (data / "admin.token").read_text().strip()
    h = {"Authorization": f"Bearer {admin}"}
    url = gateway.url.split("&token_file=")[0]  # the token travels as an encrypted secret
    token = gateway.token_file.read_text().strip()
    with TestClient(app) as c:
        r = c.post(
            "/api/v1/targets",
            headers=h,
            json={
                "name": "dr-gw",
                "url": url,
                "init": True,
                "secrets": {"OPENBDR_GATEWAY_TOKEN": token},
            },
        )
        assert r.status_code == 201, r.text
        assert (
            c.post(
                "/api/v1/policies", headers=h, json={"name": "gold", "rpo_seconds": 300}
            ).status_code
            == 201
        )
        r = c.post(
            "/api/v1/hosts",
            headers=h,
            json={
                "name": "web1",
                "target": "dr-gw",
                "policy": "gold",
                "source": {"type": "image", "paths": [str(img)]},
            },
        )
        assert r.status_code == 201, r.text
        r = c.post("/api/v1/targets/dr-gw/refresh", headers=h)
        assert r.status_code == 200, r.text
        pts = c.get("/api/v1/points", headers=h).json()
        assert [p.get("point_id", p.get("point", p.get("id"))) for p in pts] == [point.id], pts
        bad = c.post(
            "/api/v1/targets",
            headers=h,
            json={
                "name": "dr-bad",
                "url": url,
                "init": True,
                "secrets": {"OPENBDR_GATEWAY_TOKEN": "wrong"},
            },
        )
        assert bad.status_code >= 400 and "credential" in bad.text
    app.state.services.engine.dispose()
