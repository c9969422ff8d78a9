"""`openbdr agent run --config agent.toml` with a `[control]` table: one daemon tracks the
host's disk, answers `agent sync` locally and runs the server's sync jobs of its host on
the same tracker, so local syncs and jobs form one chain of incrementals."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openbdr.capture.linux.devices import resolve
from openbdr.capture.linux.tracker import instance_name

from ..control.conftest import ServerProc, wait_for
from ..helpers import OPENBDR, loop_device, make_ext4, mounted, openbdr, tree_checksums

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def top() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="openbdr-agentrun-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _fill(mp: Path, tag: str, mib: int) -> None:
    (mp / tag).mkdir(exist_ok=True)
    for i in range(mib):
        (mp / tag / f"f{i}").write_bytes(os.urandom(1 << 20))
    os.sync()


def _job(c: Any, body: dict[str, Any]) -> dict[str, Any]:
    jid = c.post("/jobs", json=body).json()["id"]
    done: dict[str, Any] = wait_for(
        lambda: c.get(f"/jobs/{jid}").json()["state"] in ("succeeded", "failed")
        and c.get(f"/jobs/{jid}").json(),
        what=f"job {jid}",
    )
    return done


def test_one_daemon_tracks_serves_locally_and_runs_the_servers_jobs(top: Path) -> None:
    repo, state = top / "repo", top / "state"
    server = ServerProc(top / "data", f"sqlite:///{top / 'catalog.db'}",
                        ["--tick", "0.5", "--lease-ttl", "4", "--workers", "0"])
    stack = contextlib.ExitStack()
    agent: subprocess.Popen[bytes] | None = None
    inst: Path | None = None
    try:
        img = make_ext4(top / "disk.img", 96)
        dev = stack.enter_context(loop_device(img))
        inst = Path("/sys/kernel/tracing/instances") / instance_name(state, resolve(dev))
        mp = stack.enter_context(mounted(dev, top / "mnt"))
        _fill(mp, "a", 8)
        server.start()
        stack.callback(server.stop)
        c = server.client()
        assert c.post("/targets", json={"name": "dr", "url": str(repo),
                                        "init": True}).status_code == 201
        # a host only its own agent can capture; jobs go to that agent's pool
        assert c.post("/hosts", json={"name": "lh1", "target": "dr", "pool": "lh1",
                                      "enabled": False, "source": {"type": "agent"}}
                      ).status_code == 201
        cfg = top / "agent.toml"
        cfg.write_text(
            f'host = "lh1"\nrepo = "{repo}"\nstate_dir = "{state}"\n'
            f'socket = "{top}/agent.sock"\ninterval = 0\ncompression = "zstd"\n'
            f'[control]\ncredential = "{top}/cred.json"\npoll = 0.3\n'
            f'[[disk]]\nname = "disk0"\ndevice = "{dev}"\n'
        )
        tok = c.post("/agents/enrolment-tokens", json={"pool": "lh1"}).json()["token"]
        openbdr("agent", "enrol", "--server", server.url, "--token", tok, "--name", "lh1",
                "--config", str(cfg))
        assert json.loads((top / "cred.json").read_text())["pool"] == "lh1"
        assert "[control]" in cfg.read_text()  # the configuration itself is untouched

        log = open(top / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        agent = subprocess.Popen([*OPENBDR, "agent", "run", "--config", str(cfg)],
                                 stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def status() -> dict[str, Any] | None:
            p = openbdr("agent", "status", "--config", str(cfg), check=False)
            return json.loads(p.stdout) if p.returncode == 0 else None

        st = wait_for(status, 120, what="the agent to answer")
        assert st["control"]["pool"] == "lh1" and st["disks"][0]["device"] == dev

        first = _job(c, {"kind": "sync", "host": "lh1"})
        assert first["state"] == "succeeded", first
        assert first["result"]["point"]["disks"][0]["mode"] == "full"
        assert first["lease_owner"] is None

        _fill(mp, "b", 4)  # the local request continues the job's chain
        local = json.loads(openbdr("agent", "sync", "--config", str(cfg), timeout=600).stdout)
        assert local["ok"] and local["disks"][0]["mode"] == "incremental", local

        _fill(mp, "c", 4)
        second = _job(c, {"kind": "sync", "host": "lh1"})
        assert second["state"] == "succeeded", second
        disk = second["result"]["point"]["disks"][0]
        assert disk["mode"] == "incremental", disk
        assert disk["read_bytes"] <= 16 << 20  # changed blocks, not 16 MiB of files + the fs
        expected = tree_checksums(mp)

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(120) == 0
        agent = None

        out = top / "restored.img"
        pid = second["result"]["point"]["id"]
        openbdr("restore", "-r", str(repo), "-H", "lh1", "-p", pid, "--to", str(out),
                timeout=600)
        with loop_device(out, read_only=True) as rdev, \
                mounted(rdev, top / "rmnt", "ro,noload") as rmp:
            assert tree_checksums(rmp) == expected
        known = {p["id"] for p in c.get("/points", params={"host": "lh1"}).json()}
        assert {first["result"]["point"]["id"], pid} <= known  # the server mirrors job points
        # the pause the sync cost production: its final freeze of the mounted ext4, as the
        # point's token recorded it
        mirrored = c.get(f"/points/lh1/{pid}").json()
        windows = mirrored["disks"][0]["freezes_s"]
        assert len(windows) == 1 and 0 < windows[0] < 10, mirrored["disks"][0]
        assert mirrored["freeze_s"] == round(windows[0], 4)
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
        stack.close()
        if inst is not None:
            with contextlib.suppress(Exception):
                if inst.exists():
                    (inst / "events/block/block_rq_complete/enable").write_text("0\n")
                    inst.rmdir()
