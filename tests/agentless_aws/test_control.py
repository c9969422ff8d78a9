"""An EC2 instance protected through a real server: platform `aws` added with sealed keys
and the fake's endpoint, discovered, the instance added as a host, two syncs (the second
incremental, the first snapshot deleted after it), and the point restored byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ..control.conftest import ServerProc, wait_for
from ..fakes.aws import SECRET_KEY, FakeAWS
from .conftest import image, same_bytes, write

MIB = 1 << 20


def _finish(c: httpx.Client, jid: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        j = dict(c.get(f"/jobs/{jid}").json())
        return j if j["state"] in ("succeeded", "failed", "cancelled") else None

    return dict(wait_for(done, what=f"job {jid}"))


def test_instance_protected_through_the_server(fake: FakeAWS, tmp_path: Path) -> None:
    vol = image(tmp_path / "v.img", [(0, 3 * MIB), (200 * MIB, MIB)])
    acc = fake.account
    v = acc.add_volume(vol)
    acc.add_instance([v], name="web", tags={"env": "prod"})
    srv = ServerProc(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'catalog.db'}",
        ["--tick", "0.5", "--lease-ttl", "4", "--workers", "1", "--no-scheduler"],
    )
    srv.start()
    try:
        c = srv.client()
        assert (
            c.post(
                "/targets", json={"name": "dr", "url": str(tmp_path / "repo"), "init": True}
            ).status_code
            == 201
        )
        r = c.post(
            "/platforms",
            json={
                "name": "prod",
                "type": "aws",
                "endpoint": acc.region,
                "credentials": fake.credentials(),
                "options": {"endpoint_url": fake.url, "poll_interval": 0.05},
            },
        )
        assert r.status_code == 201, r.text
        assert c.post("/platforms/prod/test").status_code == 200
        vms = c.post("/platforms/prod/discover").json()["vms"]
        assert [(x["name"], [d["name"] for d in x["disks"]]) for x in vms] == [("web", [v.id])]
        r = c.post("/hosts", json={"name": "web1", "platform": "prod", "vm": "web", "target": "dr"})
        assert r.status_code == 201, r.text
        for _ in range(2):
            r = c.post("/hosts/web1/sync", json={})
            job = _finish(c, r.json()["id"])
            assert job["state"] == "succeeded", job
            write(vol, [(50 * MIB, 4096)])
        points = c.get("/points", params={"host": "web1"}).json()
        assert [p["disks"][0]["mode"] for p in points] == ["incremental", "full"]
        assert len(acc.live_snapshots()) == 1  # the first went once the second committed
        snap = acc.live_snapshots()[0]  # the volume moved on since: compare with the snapshot
        frozen = acc.image_of(snap.id, tmp_path / "frozen.img")
        out = tmp_path / "restored.img"
        r = c.post(
            "/jobs", json={"kind": "restore", "host": "web1", "params": {"to": str(out), "disk": 0}}
        )
        assert _finish(c, r.json()["id"])["state"] == "succeeded"
        assert same_bytes(out, frozen)
        text = str(c.get("/platforms/prod").json()) + str(c.get("/hosts/web1").json())
        assert SECRET_KEY not in text  # sealed: never shown
    finally:
        srv.stop()
