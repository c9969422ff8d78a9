"""The all-in-one server end to end: scheduler-started syncs, pause → change compression
→ resume, restore, SIGKILL of the server in the middle of a sync, CLI, metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from ..helpers import openbdr, sha256
from .conftest import ServerProc, wait_for
from .data import chunk_codecs, disk_image


def _job(c: httpx.Client, job_id: int) -> dict[str, Any]:
    return dict(c.get(f"/jobs/{job_id}").json())


def _setup(
    c: httpx.Client, tmp: Path, image: Path, bwlimit: int, rpo: int = 3600, enabled: bool = True
) -> None:
    r = c.post("/targets", json={"name": "dr", "url": str(tmp / "repo"), "init": True})
    assert r.status_code == 201, r.text
    r = c.post("/policies", json={"name": "gold", "rpo_seconds": rpo, "bwlimit": bwlimit})
    assert r.status_code == 201, r.text
    r = c.post("/hosts", json={
        "name": "web1", "target": "dr", "policy": "gold",
        "source": {"type": "image", "paths": [str(image)], "valid_only": False},
        "enabled": enabled,
    })
    assert r.status_code == 201, r.text


def _restore_and_compare(c: httpx.Client, tmp: Path, image: Path, point: str) -> None:
    out = tmp / f"restored-{point}.img"
    r = c.post("/jobs", json={"kind": "restore", "host": "web1",
                              "params": {"point": point, "to": str(out), "disk": 0}})
    assert r.status_code == 201, r.text
    job = wait_for(lambda: _job(c, r.json()["id"])["state"] in ("succeeded", "failed")
                   and _job(c, r.json()["id"]), what="restore")
    assert job["state"] == "succeeded", job
    assert sha256(out) == sha256(image)


def test_pause_change_compression_resume(server: ServerProc, tmp_path: Path) -> None:
    image = disk_image(tmp_path)
    c = server.client()
    _setup(c, tmp_path, image, bwlimit=6 << 20)
    # the scheduler starts the first sync by itself: the host has no restore point yet
    job = wait_for(lambda: (c.get("/jobs", params={"host": "web1", "kind": "sync"}).json()
                            or [None])[0], what="scheduled sync")
    assert job["created_by"] == "scheduler"
    jid = job["id"]
    wait_for(lambda: (_job(c, jid)["progress"].get("percent") or 0) >= 15, what="progress")
    assert c.post(f"/jobs/{jid}/pause").status_code == 200
    paused = wait_for(lambda: _job(c, jid)["state"] == "paused" and _job(c, jid),
                      what="paused")
    done_at_pause = paused["progress"]["done_bytes"]
    total = paused["progress"]["total_bytes"]
    assert 0 < done_at_pause < total
    assert c.get("/points", params={"host": "web1"}).json() == []
    before = chunk_codecs(tmp_path / "repo")
    # compression off so far: stored as is (0), or LZ4 (2) for blocks with all-zero pages
    assert before and 1 not in before and set(before) <= {0, 2}, before

    r = c.patch("/policies/gold", json={"compression": "zstd", "bwlimit": 0})
    assert r.status_code == 200 and r.json()["compression"] == "zstd"
    assert c.post(f"/jobs/{jid}/resume").json()["state"] == "queued"
    final = wait_for(lambda: _job(c, jid)["state"] in ("succeeded", "failed") and _job(c, jid),
                     what="sync end")
    assert final["state"] == "succeeded", final
    after = chunk_codecs(tmp_path / "repo")
    # blocks sent before the pause stayed as they were; the rest used zstd (1)
    assert (after.get(0, 0), after.get(2, 0)) == (before.get(0, 0), before.get(2, 0)), after
    assert after.get(1, 0) > 0, after
    points = c.get("/points", params={"host": "web1"}).json()
    assert len(points) == 1 and points[0]["codec"] == "zstd"
    assert points[0]["freeze_s"] is None  # an image source freezes nothing
    disk = points[0]["disks"][0]
    assert disk["fallback_reason"] is None and disk["valid_bytes"] > 0, disk
    # the resumed run read only what was left (nothing resent)
    assert points[0]["read_bytes"] <= total - done_at_pause + (8 << 20)
    _restore_and_compare(c, tmp_path, image, points[0]["id"])

    # the CLI talks to the same server
    env = {**os.environ, "OPENBDR_SERVER": server.url, "OPENBDR_TOKEN": server.token}
    listed = openbdr("host", "list", env=env).stdout
    assert "web1" in listed and "ok" in listed
    assert points[0]["id"] in openbdr("point", "list", "--host", "web1", env=env).stdout
    openbdr("policy", "set", "silver", "--rpo", "10m", "--compression", "lz4", env=env)
    assert c.get("/policies/silver").json()["rpo_seconds"] == 600
    bad = openbdr("host", "show", "nope", env=env, check=False)
    assert bad.returncode != 0 and "host 'nope' does not exist" in bad.stderr
    metrics = c.get(server.url + "/metrics").text
    assert 'openbdr_restore_point_age_seconds{host="web1"}' in metrics

    # the repository is the truth: a host forgotten and added again gets its points back
    assert c.post("/targets/dr/refresh").json() == {"added": 0, "removed": 0, "points": 1}
    assert c.delete("/hosts/web1").status_code == 204
    assert c.get("/points").json() == []
    assert c.post("/hosts", json={"name": "web1", "target": "dr", "enabled": False,
                                  "source": {"type": "image", "paths": [str(image)]}}
                  ).status_code == 201
    assert c.post("/targets/dr/refresh").json() == {"added": 1, "removed": 0, "points": 1}
    assert [p["id"] for p in c.get("/points").json()] == [points[0]["id"]]
    audit = [(a["action"], a["object_type"]) for a in c.get("/audit").json()]
    assert ("pause", "job") in audit and ("update", "policy") in audit


def test_sigkill_server_mid_sync_resumes(server: ServerProc, tmp_path: Path) -> None:
    image = disk_image(tmp_path)
    c = server.client()
    # created disabled: the scheduler must not race the test with a sync of its own
    _setup(c, tmp_path, image, bwlimit=6 << 20, enabled=False)
    r = c.post("/jobs", json={"kind": "sync", "host": "web1",
                              "params": {"checkpoint_every": 0.5}})
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    wait_for(lambda: (_job(c, jid)["progress"].get("percent") or 0) >= 30, what="progress")
    ckpt = tmp_path / "repo" / "checkpoints" / "web1" / "state.json"
    wait_for(ckpt.exists, what="a checkpoint")
    server.kill()
    c.close()
    server.start()
    c = server.client()
    final = wait_for(lambda: _job(c, jid)["state"] in ("succeeded", "failed") and _job(c, jid),
                     what="sync after restart")
    assert final["state"] == "succeeded", final
    assert final["attempts"] == 2
    logs = [x["message"] for x in c.get(f"/jobs/{jid}/logs").json()]
    assert any("died with the server" in m for m in logs), logs
    points = c.get("/points", params={"host": "web1"}).json()
    on_disk = list((tmp_path / "repo" / "points" / "web1").glob("*.json"))
    assert len(points) == 1 and len(on_disk) == 1
    assert points[0]["read_bytes"] < sum(d["size"] for d in points[0]["disks"])
    _restore_and_compare(c, tmp_path, image, points[0]["id"])


def test_several_processes_share_the_port(catalog_url: str, tmp_path: Path) -> None:
    """`--processes 2`: the API answers, a child process's worker runs the scheduled
    sync under its own identity, and stopping the server stops every process."""
    import subprocess

    srv = ServerProc(tmp_path / "data", catalog_url,
                     ["--processes", "2", "--workers", "1", "--tick", "0.5"])
    children: set[int] = set()
    srv.start()
    try:
        assert srv.proc is not None
        image = disk_image(tmp_path, data_mib=4, size_mib=16)
        c = srv.client()
        _setup(c, tmp_path, image, bwlimit=0)
        point = wait_for(lambda: c.get("/points", params={"host": "web1"}).json(),
                         what="the scheduled sync's point")[0]
        job = c.get("/jobs", params={"host": "web1", "kind": "sync"}).json()[-1]
        logs = " ".join(x["message"] for x in c.get(f"/jobs/{job['id']}/logs").json())
        children = {int(p) for p in subprocess.run(
            ["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()}
        leased_by = {pid for pid in children if f".{pid}:0" in logs}
        assert len(leased_by) == 1, (children, logs)
        _restore_and_compare(c, tmp_path, image, point["id"])
    finally:
        srv.stop()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=30,
             what="every process of the server to exit")
