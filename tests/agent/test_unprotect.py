"""`agent sync|status` find the running daemon's configuration without `--config`, the
first sync maps mounted file systems by the kernel's allocation map, and `agent
unprotect DISK` stops tracking and removes what the agent made for the disk."""

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
from openbdr.volume.fsmap import free_extents

from ..control.conftest import wait_for
from ..helpers import OPENBDR, loop_device, make_ext4, mounted, openbdr

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20
INSTANCES = Path("/sys/kernel/tracing/instances")


@pytest.fixture
def top() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="openbdr-unprotect-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_bare_commands_and_unprotect(top: Path) -> None:
    if Path("/etc/openbdr/agent.toml").exists():
        pytest.skip("a default agent configuration exists on this machine")
    repo, state = top / "repo", top / "state"
    env = {**os.environ, "OPENBDR_RUN_DIR": str(top / "run")}
    env.pop("OPENBDR_AGENT_CONFIG", None)
    stack = contextlib.ExitStack()
    agent: subprocess.Popen[bytes] | None = None
    insts: list[Path] = []
    try:
        devs, mps = [], []
        for i in range(2):
            dev = stack.enter_context(loop_device(make_ext4(top / f"d{i}.img", 96)))
            mp = stack.enter_context(mounted(dev, top / f"m{i}"))
            (mp / "f").write_bytes(os.urandom(12 * MiB))
            devs.append(dev)
            mps.append(mp)
            insts.append(INSTANCES / instance_name(state, resolve(dev)))
        os.sync()
        openbdr("repo", "init", str(repo))
        cfg = top / "agent.toml"
        cfg.write_text(
            f'host = "u1"\nrepo = "{repo}"\nstate_dir = "{state}"\n'
            f'socket = "{top}/agent.sock"\ninterval = 0\n'
            f'# the database disk\n[[disk]]\nname = "disk0"\ndevice = "{devs[0]}"\n\n'
            f'[[disk]]\nname = "disk1"\ndevice = "{devs[1]}"\n'
        )
        log = open(top / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        agent = subprocess.Popen([*OPENBDR, "agent", "run", "--config", str(cfg)],
                                 stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        log.close()

        def status() -> dict[str, Any] | None:
            p = openbdr("agent", "status", check=False, env=env)  # no --config
            return json.loads(p.stdout) if p.returncode == 0 else None

        st = wait_for(status, 120, what="the agent to answer")
        assert [d["name"] for d in st["disks"]] == ["disk0", "disk1"]
        assert all(i.exists() for i in insts)

        reply = json.loads(openbdr("agent", "sync", env=env, timeout=600).stdout)
        assert reply["ok"], reply
        points = json.loads(openbdr("points", "-r", str(repo), "--json").stdout)
        for d, mp, dev in zip(points[-1]["disk_stats"], mps, devs, strict=True):
            # valid data is what the kernel's map says is in use, not the whole 96 MiB
            size = resolve(dev).size
            st_ = os.stat(dev)
            free = sum(e.length for e in free_extents(str(mp), os.major(st_.st_rdev),
                                                      os.minor(st_.st_rdev)))  # fmt: skip
            assert d["valid_bytes"] <= size - free + MiB, (d, size, free)
            assert d["valid_bytes"] < size / 2
            assert d["fallback_reason"] is None
            # read in whole 1 MiB blocks: the used ones, plus the few blocks changed since
            assert d["read_bytes"] < min(1.5 * d["valid_bytes"], size / 2), d
            assert d["freezes_s"] and all(s < 10 for s in d["freezes_s"])

        out = openbdr("agent", "unprotect", "disk1", env=env).stdout
        assert f"removed tracefs instance {insts[1]}" in out, out
        assert not insts[1].exists() and insts[0].exists()
        text = cfg.read_text()
        assert "disk1" not in text and 'name = "disk0"' in text and "# the database" in text
        reply = json.loads(openbdr("agent", "sync", env=env, timeout=600).stdout)
        assert reply["ok"] and [d["name"] for d in reply["disks"]] == ["disk0"], reply

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(120) == 0
        agent = None
        assert insts[0].exists()  # a stopped agent leaves its instance recording
        # the daemon is gone: unprotect cleans up by itself
        out = openbdr("agent", "unprotect", "disk0", "--config", str(cfg), env=env).stdout
        assert not insts[0].exists(), out
        assert not (state / f"{resolve(devs[0]).name}.track").exists()
    finally:
        if agent is not None:
            agent.kill()
            agent.wait()
        stack.close()
        for inst in insts:
            if inst.exists():
                with contextlib.suppress(OSError):
                    (inst / "events/block/block_rq_complete/enable").write_text("0\n")
                    inst.rmdir()
