"""The scheduled `copy` job: a policy with a second site gets its hosts' points copied
there, and the host's status says where the copies are and how old the newest is."""

from __future__ import annotations

from pathlib import Path

from ..helpers import openbdr, sha256
from .conftest import ServerProc, wait_for
from .data import disk_image


def test_policy_copy_is_scheduled_and_shown(server: ServerProc, tmp_path: Path) -> None:
    image = disk_image(tmp_path, data_mib=4, size_mib=16)
    c = server.client()
    for name in ("dr", "offsite"):
        r = c.post("/targets", json={"name": name, "url": str(tmp_path / name), "init": True})
        assert r.status_code == 201, r.text
    r = c.post("/policies", json={"name": "gold", "rpo_seconds": 3600, "copy_plan": {
        "target": "offsite", "every_seconds": 300, "keep_last": 3}})
    assert r.status_code == 201, r.text
    assert r.json()["copy_plan"]["target"] == "offsite"
    r = c.post("/hosts", json={"name": "web1", "target": "dr", "policy": "gold",
                               "source": {"type": "image", "paths": [str(image)]}})
    assert r.status_code == 201, r.text

    def copied() -> dict | None:  # type: ignore[type-arg]
        jobs = c.get("/jobs", params={"kind": "copy", "host": "web1"}).json()
        done = [j for j in jobs if j["state"] in ("succeeded", "failed")]
        return done[0] if done else None

    job = wait_for(copied, what="a scheduled copy job")
    assert job["state"] == "succeeded", job
    point = c.get("/points", params={"host": "web1"}).json()[0]["id"]
    assert job["result"]["copied"] == [point] and job["result"]["to"] == "offsite"
    status = c.get("/hosts/web1").json()["status"]
    (where,) = status["copies"]
    assert where["target"] == "offsite" and where["point"] == point
    assert where["age_seconds"] >= 0
    dash = c.get("/console/dashboard").json()
    (row,) = [r for r in dash["hosts"] if r["name"] == "web1"]
    assert row["copy_age_seconds"] is not None and row["copy_age_seconds"] >= 0
    out = tmp_path / "from-offsite.img"
    openbdr("restore", "-r", str(tmp_path / "offsite"), "-H", "web1", "-p", point,
            "--to", str(out))
    assert sha256(out) == sha256(image)
