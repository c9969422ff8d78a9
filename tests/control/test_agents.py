"""Remote agents: enrol with one-time tokens, pull their pool's jobs over HTTP; when one
is SIGKILLed mid-sync its lease expires and another agent finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from ..helpers import OPENBDR, openbdr, sha256
from .conftest import ServerProc, wait_for
from .data import disk_image


def _agent(server: ServerProc, tmp: Path, name: str) -> Path:
    c = server.client()
    tok = c.post("/agents/enrolment-tokens", json={"pool": "proxy"}).json()["token"]
    cfg = tmp / f"{name}.json"
    openbdr("agent", "enrol", "--server", server.url, "--token", tok, "--name", name,
            "--config", str(cfg))
    assert oct(cfg.stat().st_mode & 0o777) == "0o600"
    # a one-time token: a second use is refused with one clear line
    again = openbdr("agent", "enrol", "--server", server.url, "--token", tok, "--name", "x",
                    "--config", str(tmp / "x.json"), check=False)
    assert again.returncode != 0 and "enrolment token" in again.stderr
    return cfg


def _start(cfg: Path, tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / f"{cfg.stem}.log", "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen([*OPENBDR, "agent", "run", "--config", str(cfg), "--poll", "0.3"],
                            stdout=log, stderr=subprocess.STDOUT)


def test_killed_agent_job_is_released_and_completed(server: ServerProc, tmp_path: Path) -> None:
    image = disk_image(tmp_path)
    c = server.client()
    assert c.post("/targets", json={"name": "dr", "url": str(tmp_path / "repo"),
                                    "init": True}).status_code == 201
    assert c.post("/policies", json={"name": "slow", "bwlimit": 6 << 20}).status_code == 201
    assert c.post("/hosts", json={
        "name": "db1", "target": "dr", "policy": "slow", "pool": "proxy", "enabled": False,
        "source": {"type": "image", "paths": [str(image)], "valid_only": False},
    }).status_code == 201
    cfg_a, cfg_b = _agent(server, tmp_path, "agent-a"), _agent(server, tmp_path, "agent-b")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_start(cfg_a, tmp_path))
        jid = c.post("/jobs", json={"kind": "sync", "host": "db1",
                                    "params": {"checkpoint_every": 0.5}}).json()["id"]

        def job() -> dict[str, Any]:
            return dict(c.get(f"/jobs/{jid}").json())

        wait_for(lambda: (job()["progress"].get("percent") or 0) >= 30, what="progress on A")
        assert job()["lease_owner"].startswith("agent:agent-a:")
        wait_for((tmp_path / "repo" / "checkpoints" / "db1" / "state.json").exists,
                 what="checkpoint")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs.append(_start(cfg_b, tmp_path))
        final = wait_for(lambda: job()["state"] in ("succeeded", "failed") and job(),
                         what="job on B")
        assert final["state"] == "succeeded", final
        logs = [x["message"] for x in c.get(f"/jobs/{jid}/logs").json()]
        assert any("lease of agent:agent-a:0 expired" in m for m in logs), logs
        assert any(m.startswith("leased by agent:agent-b:0") for m in logs), logs
        points = c.get("/points", params={"host": "db1"}).json()
        assert len(points) == 1
        assert len(list((tmp_path / "repo" / "points" / "db1").glob("*.json"))) == 1
        # the restore runs on the agent too; the bytes match the source
        out = tmp_path / "restored.img"
        rj = c.post("/jobs", json={"kind": "restore", "host": "db1",
                                   "params": {"to": str(out), "disk": 0}}).json()["id"]
        done = wait_for(lambda: c.get(f"/jobs/{rj}").json()["state"] in ("succeeded", "failed")
                        and c.get(f"/jobs/{rj}").json(), what="restore")
        assert done["state"] == "succeeded" and done["lease_owner"] is None
        assert sha256(out) == sha256(image)
        agents = {a["name"]: a for a in c.get("/agents").json()}
        assert set(agents) == {"agent-a", "agent-b"} and agents["agent-b"]["last_seen"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
