"""Platforms end to end on a real server (SQLite and PostgreSQL): add, list, show, test,
discover; VMs protected as hosts and synced through the server, restored byte for byte;
a VM that changes its disks or vanishes raises an alert; one clear error for an unknown
platform type, an unreachable endpoint, refused credentials and an unknown VM; the
credentials never leave the catalog except in the job spec of the worker that runs the
job; a platform with a proxy pool runs its jobs only on that pool's proxies, several at
once on one proxy. The platform is `fakevirt` (tests/control/fakeplatform.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import OPENBDR, ROOT, openbdr, sha256
from .conftest import ServerProc, wait_for
from .data import disk_image
from .fakeplatform import write_platform

PASSWORD = "S3cret-pw"


@pytest.fixture
def psrv(catalog_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
         ) -> Iterator[ServerProc]:
    """A server (and, through the environment, its agents) with the fake platform type."""
    monkeypatch.setenv("OPENBDR_PLUGINS", "tests.control.fakeplatform")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    srv = ServerProc(tmp_path / "data", catalog_url,
                     ["--tick", "0.5", "--lease-ttl", "4", "--workers", "2", "--no-scheduler"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def cli(srv: ServerProc, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENBDR_SERVER": srv.url, "OPENBDR_TOKEN": srv.token}
    return openbdr(*args, check=check, env=env)


def _vm(vid: str, name: str, disks: list[tuple[str, Path]]) -> dict[str, Any]:
    return {"id": vid, "name": name, "power_state": "running",
            "disks": [{"name": n, "path": str(p), "bus": "virtio"} for n, p in disks]}


def _job(c: httpx.Client, jid: int) -> dict[str, Any]:
    return dict(c.get(f"/jobs/{jid}").json())


def _finish(c: httpx.Client, jid: int) -> dict[str, Any]:
    return dict(wait_for(lambda: _job(c, jid)["state"] in ("succeeded", "failed", "cancelled")
                         and _job(c, jid), what=f"job {jid}"))


def _sync(c: httpx.Client, host: str) -> dict[str, Any]:
    r = c.post(f"/hosts/{host}/sync", json={})
    assert r.status_code == 201, r.text
    return _finish(c, r.json()["id"])


def _catalog_text(c: httpx.Client) -> str:
    """Everything the API shows about platforms, hosts, jobs and their logs, alerts, audit."""
    parts: list[Any] = [c.get(p).json() for p in ("/platforms", "/hosts", "/jobs?limit=1000",
                                                   "/alerts?open=false", "/audit", "/kinds")]
    for p in c.get("/platforms").json():
        parts += [c.get(f"/platforms/{p['name']}").json(),
                  c.get(f"/platforms/{p['name']}/vms").json()]
    for j in c.get("/jobs?limit=1000").json():
        parts.append(c.get(f"/jobs/{j['id']}/logs").json())
    return json.dumps(parts)


def test_platform_discovery_protection_sync_and_errors(psrv: ServerProc, tmp_path: Path) -> None:
    web = disk_image(tmp_path, "web.img", data_mib=6, size_mib=16)
    db0 = disk_image(tmp_path, "db0.img", data_mib=4, size_mib=16)
    db1 = disk_image(tmp_path, "db1.img", data_mib=2, size_mib=8)
    pdir = tmp_path / "kvm1"
    web_vm = _vm("vm-100", "web", [("vda", web)])
    endpoint = write_platform(pdir, [web_vm, _vm("vm-200", "db", [("vda", db0), ("vdb", db1)])])
    c = psrv.client()
    assert c.post("/targets", json={"name": "dr", "url": str(tmp_path / "repo"),
                                    "init": True}).status_code == 201
    assert c.post("/policies", json={"name": "gold"}).status_code == 201

    # add + test through the CLI; the platform has no pool: the server's workers run its jobs
    got = cli(psrv, "platform", "add", "kvm1", "--type", "fakevirt", "--endpoint", endpoint,
              "--credential", "user=root", "--credential", f"password={PASSWORD}", "--test")
    assert "platform kvm1 (fakevirt)" in got.stdout and "test: fakevirt at" in got.stdout, got
    assert "2 VM(s)" in got.stdout
    listed = json.loads(cli(psrv, "platform", "list", "--json").stdout)
    assert [(p["name"], p["type"], p["has_credentials"], p["last_test_ok"]) for p in listed] \
        == [("kvm1", "fakevirt", True, True)]
    shown = cli(psrv, "platform", "show", "kvm1").stdout
    assert "kvm1" in shown and PASSWORD not in shown

    # discovery: the VMs, their disks and power state
    table = cli(psrv, "platform", "discover", "kvm1").stdout
    assert "vm-100" in table and "vm-200" in table and "vdb" in table, table
    vms = {v["id"]: v for v in c.post("/platforms/kvm1/discover").json()["vms"]}
    assert [(d["name"], d["size"]) for d in vms["vm-200"]["disks"]] == [
        ("vda", 16 << 20), ("vdb", 8 << 20)]
    assert vms["vm-100"]["power_state"] == "running" and vms["vm-100"]["host"] is None

    # protect a VM by name; the host row holds no credentials
    got = cli(psrv, "host", "add", "web1", "--platform", "kvm1", "--vm", "web", "--target", "dr",
              "--policy", "gold")
    assert "VM vm-100 of platform kvm1" in got.stdout, got
    host = c.get("/hosts/web1").json()
    assert host["source"] == {"type": "fakevirt", "vm": "vm-100"}
    assert (host["platform"], host["vm"]) == ("kvm1", "vm-100")
    assert c.post("/platforms/kvm1/discover").json()["vms"][0]["host"] == "web1"

    # a sync through the server commits a point; its restore equals the VM's disk
    job = _sync(c, "web1")
    assert job["state"] == "succeeded", job
    assert job["lease_owner"] is None and job["pool"] is None
    points = c.get("/points", params={"host": "web1"}).json()
    assert len(points) == 1 and [d["name"] for d in points[0]["disks"]] == ["vda"]
    out = tmp_path / "restored.img"
    r = c.post("/jobs", json={"kind": "restore", "host": "web1",
                              "params": {"to": str(out), "disk": 0}})
    assert _finish(c, r.json()["id"])["state"] == "succeeded"
    assert sha256(out) == sha256(web)

    # the VM gains a disk and its first disk grows: the next sync says so in an alert
    extra = disk_image(tmp_path, "web-extra.img", data_mib=1, size_mib=8)
    with open(web, "r+b") as f:
        f.truncate(24 << 20)
    web_vm["disks"].append({"name": "vdb", "path": str(extra), "bus": "scsi"})
    write_platform(pdir, [web_vm, _vm("vm-200", "db", [("vda", db0), ("vdb", db1)])])
    assert _sync(c, "web1")["state"] == "succeeded"
    alerts = {a["kind"]: a for a in c.get("/alerts").json() if a["host"] == "web1"}
    changed = alerts["vm_disks_changed"]["message"]
    assert "disk vdb added" in changed and "disk vda grew from 16 MiB to 24 MiB" in changed
    newest = c.get("/points", params={"host": "web1"}).json()[0]
    assert {d["name"]: d["size"] for d in newest["disks"]} == {"vda": 24 << 20, "vdb": 8 << 20}

    # the VM vanishes: the sync fails and a critical alert says what to do
    write_platform(pdir, [_vm("vm-200", "db", [("vda", db0), ("vdb", db1)])])
    job = _sync(c, "web1")
    assert job["state"] == "failed" and "no VM 'vm-100'" in job["error"], job
    alerts = {a["kind"]: a for a in c.get("/alerts").json() if a["host"] == "web1"}
    assert alerts["vm_missing"]["severity"] == "critical"
    assert "no longer exists on fakevirt platform kvm1" in alerts["vm_missing"]["message"]

    # bad input: one clear line each, in the CLI and as problem JSON from the API
    bad = cli(psrv, "platform", "add", "x1", "--type", "nosuch", "--endpoint", endpoint,
              check=False)
    assert bad.returncode != 0 and "unknown platform type 'nosuch'" in bad.stderr, bad
    assert bad.stderr.strip().count("\n") == 0
    r = c.post("/platforms", json={"name": "x1", "type": "nosuch", "endpoint": endpoint})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    r = c.post("/jobs", json={"kind": "platform-test", "params": {"platform_id": 1}})
    assert r.status_code == 400 and "POST /api/v1/platforms/{name}/test" in r.text

    cli(psrv, "platform", "add", "kvm-bad", "--type", "fakevirt", "--endpoint", endpoint,
        "--credential", "user=root", "--credential", "password=Bad-pw-77")
    bad = cli(psrv, "platform", "test", "kvm-bad", check=False)
    assert bad.returncode != 0 and "refused the credentials of user 'root'" in bad.stderr, bad
    r = c.post("/platforms/kvm-bad/discover")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "platform"
    assert "refused the credentials" in r.json()["error"]["message"]
    assert c.get("/platforms/kvm-bad").json()["last_test_ok"] is False

    c.post("/platforms", json={"name": "kvm-gone", "type": "fakevirt",
                               "endpoint": f"file://{tmp_path}/nowhere",
                               "credentials": {"user": "root", "password": PASSWORD}})
    r = c.post("/platforms/kvm-gone/test")
    assert r.status_code == 400 and "cannot reach fakevirt platform" in r.json()["error"]["message"]

    bad = cli(psrv, "host", "add", "ghost", "--platform", "kvm1", "--vm", "nosuch",
              "--target", "dr", check=False)
    assert bad.returncode != 0 and "no VM 'nosuch' on fakevirt platform kvm1" in bad.stderr, bad
    r = c.post("/hosts", json={"name": "ghost", "platform": "kvm1", "vm": "nosuch",
                               "target": "dr"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_vm"
    assert c.get("/hosts/ghost").status_code == 404
    r = c.post("/hosts", json={"name": "ghost", "target": "dr",
                               "source": {"type": "fakevirt", "vm": "vm-200"}})
    assert r.status_code == 400 and "is a platform's" in r.json()["error"]["message"]

    # the credentials: sealed in the catalog, in no API answer, not in the database file
    text = _catalog_text(c)
    assert PASSWORD not in text and "Bad-pw-77" not in text
    if psrv.database.startswith("sqlite:///"):
        db = Path(psrv.database.removeprefix("sqlite:///"))
        for f in db.parent.glob(db.name + "*"):
            assert PASSWORD.encode() not in f.read_bytes(), f

    # a platform with hosts stays; without, it goes
    r = c.delete("/platforms/kvm1")
    assert r.status_code == 409 and "web1" in r.json()["error"]["message"]
    cli(psrv, "platform", "remove", "kvm-bad")
    assert {p["name"] for p in c.get("/platforms").json()} == {"kvm1", "kvm-gone"}


# -- proxies ---------------------------------------------------------------------------
def _enrol(srv: ServerProc, tmp: Path, name: str, pool: str) -> Path:
    tok = srv.client().post("/agents/enrolment-tokens", json={"pool": pool}).json()["token"]
    cfg = tmp / f"{name}.json"
    openbdr("agent", "enrol", "--server", srv.url, "--token", tok, "--name", name,
            "--config", str(cfg))
    return cfg


def _proxy(cfg: Path, tmp: Path, workers: int) -> subprocess.Popen[bytes]:
    log = open(tmp / f"{cfg.stem}.log", "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen([*OPENBDR, "agent", "run", "--config", str(cfg), "--poll", "0.3",
                             "--workers", str(workers)], stdout=log, stderr=subprocess.STDOUT)


def test_platform_jobs_run_only_on_its_pool(psrv: ServerProc, tmp_path: Path) -> None:
    images = {n: disk_image(tmp_path, f"{n}.img", data_mib=12, size_mib=24) for n in ("a", "b")}
    endpoint = write_platform(tmp_path / "kvm2", [
        _vm("vm-a", "alpha", [("vda", images["a"])]), _vm("vm-b", "beta", [("vda", images["b"])])])
    c = psrv.client()
    assert c.post("/targets", json={"name": "dr", "url": str(tmp_path / "repo"),
                                    "init": True}).status_code == 201
    # slow enough that two syncs overlap on the one proxy
    assert c.post("/policies", json={"name": "slow", "bwlimit": 4 << 20}).status_code == 201
    r = c.post("/platforms", json={"name": "kvm2", "type": "fakevirt", "endpoint": endpoint,
                                   "pool": "px", "credentials": {"user": "root",
                                                                 "password": PASSWORD}})
    assert r.status_code == 201 and r.json()["pool"] == "px"
    other = _enrol(psrv, tmp_path, "other", "elsewhere")
    px = _enrol(psrv, tmp_path, "px1", "px")
    procs = [_proxy(other, tmp_path, 1)]
    try:
        # only a proxy of another pool runs: nobody takes the test, and the answer says so
        r = c.post("/platforms/kvm2/test", params={"timeout": 3})
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert "no sync proxy of pool 'px'" in err["message"] and "agent enrol" in err["hint"]
        timed_out = c.get("/jobs", params={"kind": "platform-test"}).json()[0]
        assert timed_out["state"] == "cancelled" and timed_out["pool"] == "px"
        assert timed_out["attempts"] == 0 and timed_out["lease_owner"] is None

        procs.append(_proxy(px, tmp_path, 2))
        r = c.post("/platforms/kvm2/test")
        assert r.status_code == 200 and r.json()["ok"], r.text
        r = c.post("/platforms/kvm2/discover")
        assert [v["name"] for v in r.json()["vms"]] == ["alpha", "beta"]
        # several VMs protected in one action (the console's), then synced at once
        r = c.post("/platforms/kvm2/protect", json={"vms": ["alpha", "vm-b"], "target": "dr",
                                                     "policy": "slow"})
        assert r.status_code == 201, r.text
        assert sorted((h["name"], h["vm"], h["pool"]) for h in r.json()) == [
            ("alpha", "vm-a", "px"), ("beta", "vm-b", "px")]
        r = c.post("/platforms/kvm2/protect", json={"vms": ["alpha"], "target": "dr"})
        assert r.status_code == 409 and "already protected as host alpha" in r.text
        jids = [c.post(f"/hosts/{h}/sync", json={}).json()["id"] for h in ("alpha", "beta")]
        jobs = [_finish(c, j) for j in jids]
        assert [j["state"] for j in jobs] == ["succeeded", "succeeded"], jobs
        # two workers of the one proxy ran them side by side
        owners = set()
        for j in jids:
            for line in c.get(f"/jobs/{j}/logs").json():
                if line["message"].startswith("leased by "):
                    owners.add(line["message"].split()[2])
        assert owners == {"agent:px1:0", "agent:px1:1"}, owners
        a, b = jobs
        assert a["started"] < b["finished"] and b["started"] < a["finished"]
        for name, img in images.items():
            out = tmp_path / f"restored-{name}.img"
            host = {"a": "alpha", "b": "beta"}[name]
            r = c.post("/jobs", json={"kind": "restore", "host": host,
                                      "params": {"to": str(out), "disk": 0}})
            done = _finish(c, r.json()["id"])
            assert done["state"] == "succeeded" and done["pool"] == "px"
            assert sha256(out) == sha256(img)
        # the proxy of the other pool never leased any of them
        every = c.get("/jobs", params={"limit": 1000}).json()
        logs = json.dumps([c.get(f"/jobs/{j['id']}/logs").json() for j in every])
        assert "agent:other" not in logs and "leased by server:" not in logs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
