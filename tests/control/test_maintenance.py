"""Retention and gc are scheduled jobs of the server: a `--keep-last 3` policy leaves the
3 newest points (and a protected one), gc reclaims the forgotten points' chunks, and
what is left verifies deeply and restores byte for byte; both catalogs. A plug-in that
cannot be imported stops the server at start, in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select

from openbdr.control.crypto import SecretBox
from openbdr.control.db import make_engine, migrate, session_factory, transaction
from openbdr.control.jobs import JobQueue
from openbdr.control.maintenance import (
    keep_policy,
    normalized,
    retention_done,
    retention_every,
    target_margin,
)
from openbdr.control.models import Host, Job, Point, Policy, utcnow
from openbdr.control.scheduler import Scheduler
from openbdr.store.retention import Policy as KeepPolicy

from ..helpers import OPENBDR, openbdr, sha256
from .api import make_api
from .conftest import ServerProc, free_port, wait_for
from .data import target_and_policy

MIB = 1 << 20


def _jobs(c: httpx.Client, kind: str) -> list[dict[str, Any]]:
    return list(c.get("/jobs", params={"kind": kind, "limit": 1000}).json())


def _sync(c: httpx.Client) -> dict[str, Any]:
    r = c.post("/jobs", json={"kind": "sync", "host": "web1"})
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    job = wait_for(lambda: (j := c.get(f"/jobs/{jid}").json())["state"] in
                   ("succeeded", "failed") and j, what=f"sync {jid}")
    assert job["state"] == "succeeded", job
    return dict(job["result"]["point"])


def _chunk_files(repo: Path) -> int:
    return sum(1 for p in (repo / "chunks").rglob("*") if p.is_file())


def test_keep_last_3_forgets_reclaims_and_the_rest_restores(
    server: ServerProc, tmp_path: Path
) -> None:
    repo, image = tmp_path / "repo", tmp_path / "disk.img"
    image.write_bytes(os.urandom(8 * MIB))  # 8 blocks; each sync rewrites blocks 2-3
    env = {**os.environ, "OPENBDR_SERVER": server.url, "OPENBDR_TOKEN": server.token,
           "COLUMNS": "400"}
    c = server.client()
    assert c.post("/targets", json={"name": "dr", "url": str(repo), "init": True}
                  ).status_code == 201
    openbdr("policy", "set", "gold", "--rpo", "1h", "--keep-last", "3", "--retention-every",
            "2s", "--gc-every", "3s", "--gc-margin", "0", env=env)
    pol = c.get("/policies/gold").json()
    assert pol["retention"] == {"keep_last": 3, "every_seconds": 2, "gc_every_seconds": 3,
                                "gc_margin_seconds": 0}
    assert "keep last 3, every 2s; gc every 3s, margin 0s" in openbdr(
        "policy", "list", env=env).stdout

    snapshots: dict[str, Path] = {}
    for i in range(6):
        with open(image, "r+b") as f:
            f.seek(2 * MIB)
            f.write(os.urandom(2 * MIB))
        copy = tmp_path / f"disk-{i}.img"
        shutil.copyfile(image, copy)
        if i == 0:
            assert c.post("/hosts", json={
                "name": "web1", "target": "dr", "policy": "gold",
                "source": {"type": "image", "paths": [str(image)], "valid_only": False},
            }).status_code == 201
            # no point yet: the scheduler starts the first sync by itself
            first = wait_for(lambda: [j for j in _jobs(c, "sync") if j["state"] == "succeeded"],
                             what="scheduled sync")[0]
            point = first["result"]["point"]
            # protect it (the CLI on the repository; retention may hold the lease a moment)
            wait_for(lambda pid=point["id"]: openbdr(
                "protect", "-r", str(repo), "-H", "web1", "-p", pid, check=False
            ).returncode == 0, what="protect")
        else:
            point = _sync(c)
        snapshots[point["id"]] = copy
    ids = list(snapshots)
    keep = {ids[0], *ids[-3:]}
    # 8 chunks of the first point, 2 new ones per later point; points 2 and 3 go
    want_chunks = 8 + 2 * 3

    def settled() -> bool:
        listed = {p["id"] for p in c.get("/points", params={"host": "web1"}).json()}
        busy = [j for k in ("retention", "gc") for j in _jobs(c, k)
                if j["state"] not in ("succeeded", "failed", "cancelled")]
        return listed == keep and _chunk_files(repo) == want_chunks and not busy

    wait_for(settled, timeout=240, what="retention and gc to settle")
    openbdr("policy", "set", "gold", "--disabled", env=env)  # no more runs: a still picture
    wait_for(lambda: not [j for k in ("retention", "gc") for j in _jobs(c, k)
                          if j["state"] not in ("succeeded", "failed", "cancelled")],
             what="the last jobs")
    on_disk = json.loads(openbdr("points", "-r", str(repo), "--json").stdout)
    assert {p["id"] for p in on_disk} == keep

    retention, gcs = _jobs(c, "retention"), _jobs(c, "gc")
    assert all(j["state"] == "succeeded" for j in retention + gcs), [
        (j["kind"], j["state"], j["error"]) for j in retention + gcs if j["state"] != "succeeded"]
    forgotten = [p for j in retention for p in j["result"]["forgotten"]]
    assert sorted(forgotten) == sorted(ids[1:3])
    assert all(j["target"] == "dr" and j["host"] is None for j in gcs)
    assert all(j["params"]["margin"] == 0 for j in gcs)  # the policy's margin
    assert sum(j["result"]["deleted"] for j in gcs) == 4
    assert sum(j["result"]["deleted_bytes"] for j in gcs) >= 4 * MIB  # random: stored as is
    reclaimed = next(j for j in gcs if j["result"]["deleted"])
    shown = json.loads(openbdr("job", "show", str(reclaimed["id"]), env=env).stdout)
    assert shown["result"]["deleted_bytes"] == reclaimed["result"]["deleted_bytes"]

    listing = openbdr("job", "list", "--kind", "retention", env=env).stdout
    assert "retention" in listing and re.search(r"forgot [12], kept [34]", listing), listing
    listing = openbdr("job", "list", "--kind", "gc", env=env).stdout
    assert "gc" in listing and "reclaimed" in listing and "dr" in listing

    verified = json.loads(openbdr("verify", "-r", str(repo), "--deep", "--json").stdout)
    assert verified["ok"] and verified["points"] == 4, verified
    for pid in sorted(keep):
        out = tmp_path / f"restored-{pid}.img"
        openbdr("restore", "-r", str(repo), "-H", "web1", "-p", pid, "--to", str(out))
        assert sha256(out) == sha256(snapshots[pid])


def test_scheduler_queues_retention_and_one_gc_per_target(
    catalog_url: str, tmp_path: Path
) -> None:
    """Without workers: retention per host on its interval (not while the host is being
    restored), a gc per target (coalesced), forgotten points leave the mirror at once, the
    largest margin of a target applies."""
    engine = make_engine(catalog_url)
    migrate(engine)
    factory = session_factory(engine)
    now = utcnow()
    with transaction(factory) as s:
        t, p = target_and_policy(s, tmp_path / "repo")
        p.rpo_seconds = 86400
        p.retention = {"keep_last": 2, "every_seconds": 60, "gc_margin_seconds": 120}
        lax = Policy(name="lax", rpo_seconds=86400, compression="none", compression_level=1,
                     bwlimit=0, bandwidth_windows=[], drill_plan={}, enabled=True,
                     retention={"gc_margin_seconds": 600})  # margin only: keeps everything
        s.add(lax)
        s.flush()
        hosts = [Host(name=n, source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                      policy_id=pol.id, disks=[], enabled=True)
                 for n, pol in (("a", p), ("b", p), ("c", lax))]
        s.add_all(hosts)
        s.flush()
        for h in hosts:
            for k in range(3):
                s.add(Point(host_id=h.id, point_id=f"p{k}", created=now - timedelta(minutes=k),
                            consistency="crash"))
        tid = t.id
        # b is being restored: its retention waits (the point read could be forgotten)
        s.add(Job(kind="restore", state="running", host_id=hosts[1].id, target_id=tid,
                  params={"point": "p2", "to": "/x"}, progress={}, result={}))

    box = SecretBox(Fernet.generate_key())
    sched = Scheduler(factory, JobQueue(factory, box), box, "test")
    stats = sched.tick(now)
    assert stats["gc"] == 1  # a retention policy gc's its target weekly: never run yet
    with factory() as s:
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        retention = sorted(s.get_one(Host, j.host_id).name for j in jobs if j.kind == "retention")
        assert retention == ["a"]  # b is being restored; c's policy keeps every point
        (gc,) = [j for j in jobs if j.kind == "gc"]
        assert gc.target_id == tid and gc.host_id is None
        assert gc.params == {"margin": 600.0}  # the most careful policy of the target
        assert target_margin(s, tid) == 600.0
    assert sched.tick(now + timedelta(seconds=30)).get("periodic") == 0  # not due, and busy

    with transaction(factory) as s:
        job = s.scalars(select(Job).where(Job.kind == "retention")).first()
        assert job is not None
        job.state = "succeeded"
        retention_done(s, job, {"forgotten": ["p2"], "kept": ["p0", "p1"]})
        gc_jobs = s.scalars(select(Job).where(Job.kind == "gc")).all()
        assert len(gc_jobs) == 1  # a queued gc of the target covers it: not a second one
        gc_jobs[0].state = "running"
        retention_done(s, job, {"forgotten": ["p1"], "kept": ["p0"]})
        assert len(s.scalars(select(Job).where(Job.kind == "gc")).all()) == 2  # after it
        left = s.scalars(select(Point.point_id).where(Point.host_id == job.host_id)).all()
        assert sorted(left) == ["p0"]
    engine.dispose()


def _start_server(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OPENBDR, "server", "--data", str(tmp_path / "data"), "--database",
         f"sqlite:///{tmp_path / 'catalog.db'}", "--listen", f"127.0.0.1:{free_port()}"],
        env=env, capture_output=True, text=True, timeout=60)


def test_a_plugin_that_cannot_be_imported_stops_the_server(tmp_path: Path) -> None:
    (tmp_path / "broken_plugin.py").write_text('raise RuntimeError("boom\\nsecond line")\n')
    for plugin, says in (("nonexistent.module", "No module named 'nonexistent'"),
                         ("broken_plugin", "RuntimeError: boom second line")):
        env = {**os.environ, "OPENBDR_PLUGINS": f" {plugin} ", "PYTHONPATH": str(tmp_path)}
        proc = _start_server(tmp_path, env)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert f"plug-in {plugin} (OPENBDR_PLUGINS) cannot be imported" in lines[0]
        assert says in lines[0], lines[0]
    assert not (tmp_path / "catalog.db").exists()  # stopped before touching anything


def test_retention_settings_are_checked_and_old_names_still_apply(
    catalog_url: str, tmp_path: Path
) -> None:
    app, tokens = make_api(tmp_path / "data", catalog_url)
    h = {"Authorization": f"Bearer {tokens['operator']}"}
    with TestClient(app) as c:
        for bad in ({"keep_lats": 3}, {"keep_last": -1}, {"keep_last": 2, "every_seconds": 0}):
            r = c.patch("/api/v1/policies/gold", headers=h, json={"retention": bad})
            assert r.status_code == 422, (bad, r.text)
        r = c.patch("/api/v1/policies/gold", headers=h, json={"retention": {
            "keep_daily": 7, "keep_last": None, "gc_margin_seconds": 0}})
        assert r.status_code == 200 and r.json()["retention"] == {
            "keep_daily": 7, "gc_margin_seconds": 0}
        # a gc needs a target (a host's, or one named)
        r = c.post("/api/v1/jobs", headers=h, json={"kind": "gc"})
        assert r.status_code == 409 and "needs a host or a target" in r.text
        r = c.post("/api/v1/jobs", headers=h, json={"kind": "gc", "target": "dr"})
        assert r.status_code == 201 and r.json()["params"] == {"margin": 0.0}
        assert r.json()["host"] is None and r.json()["target"] == "dr"
        kinds = c.get("/api/v1/kinds", headers=h).json()["jobs"]
        assert {"retention", "gc"} <= set(kinds)
    app.state.services.engine.dispose()
    # what consoles before the keep_ names wrote (`last`…) still counts
    assert retention_every({"last": 2}) == 86400 and retention_every({"last": 0}) is None
    assert normalized({"last": 2, "junk": 1, "gc_margin_seconds": 0}) == {
        "keep_last": 2, "gc_margin_seconds": 0}
    assert keep_policy({"keep_last": 3, "daily": 7}) == KeepPolicy(last=3, daily=7)
