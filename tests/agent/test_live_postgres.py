"""The agent on a live PostgreSQL under pgbench, on ext4 and on XFS: the first sync reads
what the kernel's allocation map says is used (not the whole disk, even though the frozen
XFS log still holds transactions), every restore point recovers and passes a service
drill with fsck, incremental syncs read about what changed, and a killed agent resyncs to
exactly the frozen disk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openbdr.capture.linux.devices import resolve
from openbdr.capture.linux.tracker import instance_name
from openbdr.capture.replay import analyze_replayed
from openbdr.extents import Extent, subtract
from openbdr.volume import FileReader
from openbdr.volume.fsmap import free_extents

from ..helpers import OPENBDR, loop_device, make_ext4, mounted, openbdr, run
from .pg import Cluster, wait_for
from .tracing import WriteCounter, thawed

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20


@dataclass
class Live:
    fs: str
    top: Path
    device: str
    mnt: Path
    pg: Cluster
    repo: Path
    state: Path
    counter: WriteCounter
    load: subprocess.Popen[str]
    agent: subprocess.Popen[str] | None = None
    points: list[dict[str, Any]] = field(default_factory=list)

    def config(self, hook: str | None = None, freeze_timeout: float = 10) -> Path:
        cfg = self.top / "agent.toml"
        text = (
            f'host = "pg1"\nrepo = "{self.repo}"\nstate_dir = "{self.state}"\n'
            f'socket = "{self.top}/agent.sock"\ninterval = 0\ncompression = "zstd"\n'
            f"freeze_timeout = {freeze_timeout}\n"
        )
        if hook:
            text += f"frozen_hook = {json.dumps(hook)}\n"
        text += f'[[disk]]\nname = "disk0"\ndevice = "{self.device}"\n'
        cfg.write_text(text)
        return cfg

    def start_agent(self, cfg: Path) -> None:
        log = open(self.top / "agent.log", "a")  # noqa: SIM115 (kept by the process)
        self.agent = subprocess.Popen(
            [*OPENBDR, "agent", "run", "--config", str(cfg)],
            stdout=log,
            stderr=log,
            text=True,
        )
        log.close()
        wait_for(
            lambda: openbdr("agent", "status", "--config", str(cfg), check=False).returncode == 0,
            120,
            "the agent to answer",
        )

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.agent is None:
            return
        self.agent.send_signal(sig)
        try:
            self.agent.wait(60)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait()
        self.agent = None

    def used_bytes(self) -> int:
        """Bytes in use now by the kernel's map of the mounted file system."""
        st = os.stat(self.device)
        free = free_extents(str(self.mnt), os.major(st.st_rdev), os.minor(st.st_rdev))
        return resolve(self.device).size - sum(e.length for e in free)

    def sync(self, cfg: Path) -> dict[str, Any]:
        proc = openbdr("agent", "sync", "--config", str(cfg), timeout=600)
        reply: dict[str, Any] = json.loads(proc.stdout)
        assert reply["ok"], reply
        return reply


def _make_fs(fs: str, path: Path, size_mib: int) -> Path:
    if fs == "ext4":
        return make_ext4(path, size_mib)
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    run(["mkfs.xfs", "-q", str(path)])
    return path


def _mount_options(fs: str) -> str:
    # the source is mounted on this host too: a second XFS of the same UUID needs nouuid
    return "nouuid" if fs == "xfs" else ""


@pytest.fixture(scope="module", params=["ext4", "xfs"])
def live(request: pytest.FixtureRequest) -> Iterator[Live]:
    fs: str = request.param
    top = Path(tempfile.mkdtemp(prefix="openbdr-agent-"))
    os.chmod(top, 0o755)
    stack = contextlib.ExitStack()
    lv: Live | None = None
    try:
        img = _make_fs(fs, top / "disk.img", 448)
        dev = stack.enter_context(loop_device(img))
        mnt = stack.enter_context(mounted(dev, top / "mnt"))
        pg = Cluster(mnt / "pgdata", top / "sock")
        pg.initdb()
        pg.start()
        stack.callback(pg.stop, "immediate")
        pg.pgbench_init(scale=4)
        counter = WriteCounter(dev)
        stack.callback(counter.close)
        load = pg.pgbench(clients=2)
        stack.callback(lambda: (load.terminate(), load.wait(30)))
        openbdr("repo", "init", str(top / "repo"))
        lv = Live(fs, top, dev, mnt, pg, top / "repo", top / "state", counter, load)
        yield lv
    finally:
        if lv is not None:
            lv.stop_agent()
        stack.close()
        if lv is not None:
            with contextlib.suppress(Exception):
                inst = Path("/sys/kernel/tracing/instances") / instance_name(
                    lv.state, resolve(lv.device)
                )
                if inst.exists():
                    (inst / "events/block/block_rq_complete/enable").write_text("0\n")
                    inst.rmdir()
        shutil.rmtree(top, ignore_errors=True)


def _restore(lv: Live, point: str, name: str) -> Path:
    out = lv.top / name
    openbdr("restore", "-r", str(lv.repo), "-H", "pg1", "-p", point, "--to", str(out), timeout=600)
    return out


def _recover(lv: Live, image: Path) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Start PostgreSQL on a restored image (its own crash recovery), amcheck, count rows."""
    with loop_device(image) as dev, mounted(dev, lv.top / "rmnt", _mount_options(lv.fs)) as mp:
        (mp / "pgdata" / "postmaster.pid").unlink(missing_ok=True)  # the source's, still running
        pg = Cluster(mp / "pgdata", lv.top / "rsock")
        pg.start()
        try:
            check = pg.amcheck()
            rows = pg.rows()
        finally:
            pg.stop()
    return rows, check


def test_full_then_five_incrementals_all_recover(live: Live) -> None:
    cfg = live.config()
    live.start_agent(cfg)
    live.counter.take()
    results = []
    for k in range(6):
        time.sleep(4 if k else 1)
        before = live.pg.rows()
        reply = live.sync(cfg)
        after = live.pg.rows()
        changed = live.counter.take(until=thawed(reply["disks"][0]["freezes"]))
        results.append((reply, before, after, changed))
    assert live.load.poll() is None, "pgbench stopped during the syncs"
    live.stop_agent()

    used_after = live.used_bytes()
    modes = [r[0]["disks"][0]["mode"] for r in results]
    assert modes == ["full"] + ["incremental"] * 5, [
        (r[0]["disks"][0]["mode"], r[0]["disks"][0].get("fallback_reason")) for r in results
    ]
    first = results[0][0]["disks"][0]
    # the kernel's map of the mounted file system, not the whole disk (XFS's frozen log
    # made the on-disk parser keep all of it); the usage grows a little under load
    assert first["fallback_reason"] is None, first
    assert first["read_bytes"] <= used_after + 64 * MiB, (first, used_after)
    assert first["read_bytes"] < 0.8 * resolve(live.device).size, first
    for reply, _b, _a, changed in results[1:]:
        disk = reply["disks"][0]
        changed_bytes = len(changed) * MiB
        assert changed_bytes > 0
        # every byte read from the device, trust-but-verify samples included
        assert disk["device_read_bytes"] <= 1.5 * changed_bytes, (
            disk["device_read_bytes"], len(changed), disk["pass_bytes"], disk["staged_bytes"]
        )
        assert all(s < 10 for s in disk["freeze_s"])

    last_rows = -1
    for i, (reply, before, after, _c) in enumerate(results):
        image = _restore(live, reply["point"], f"r{i}.img")
        try:
            rows, check = _recover(live, image)
        finally:
            image.unlink()
        assert check.returncode == 0, check.stdout + check.stderr
        assert before <= rows <= after, (i, before, rows, after)
        assert rows >= last_rows
        last_rows = rows
        live.points.append({"point": reply["point"], "rows": rows})
        drill = _drill(live, reply["point"])
        assert drill["verdict"] == "passed", json.dumps(drill, indent=1)
        fsck = [c for c in drill["checks"] if c["type"] == "fsck"]
        assert fsck and all(c["ok"] for c in fsck), fsck


DRILL = """
[drill]
kind = "service"
timeout = 300
fsck = true

[service]
type = "postgresql"
data_dir = "pgdata"
port = 5432
"""


def _drill(lv: Live, point: str) -> dict[str, Any]:
    """A service drill of `point` (fsck after replay, PostgreSQL's recovery, pg_amcheck)."""
    plan = lv.top / "drill.toml"
    plan.write_text(DRILL)
    proc = openbdr("drill", "run", "--repo", str(lv.repo), "--host", "pg1", "--point", point,
                   "--plan", str(plan), "--json", check=False, timeout=600)  # fmt: skip
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def _assert_same_valid_data(ref: Path, image: Path) -> None:
    """`image` holds `ref`'s valid data byte for byte, and zeros or `ref`'s bytes elsewhere."""
    with open(ref, "rb") as f, open(image, "rb") as g:
        size = os.fstat(f.fileno()).st_size
        assert os.fstat(g.fileno()).st_size == size
        # a frozen XFS log still holds transactions: valid data after its replay
        valid = analyze_replayed(FileReader(ref), str(ref)).valid_extents
        for ext in valid:
            f.seek(ext.offset)
            g.seek(ext.offset)
            left = min(ext.length, size - ext.offset)
            while left > 0:
                n = min(left, 8 * MiB)
                assert f.read(n) == g.read(n), f"differs in valid data at {ext}"
                left -= n
        # outside the valid data a point holds zeros or the device's own bytes
        for gap in subtract([Extent(0, size)], valid):
            pos = gap.offset
            while pos < gap.end:
                n = min(gap.end - pos, MiB)
                f.seek(pos)
                g.seek(pos)
                a, b = f.read(n), g.read(n)
                assert a == b or b == bytes(n), f"differs outside valid data at {pos}"
                pos += n


def _fsck(live: Live, image: Path) -> None:
    """The file system of a restored image is clean once it recovered (as on boot)."""
    with loop_device(image) as dev:
        with mounted(dev, live.top / "fmnt", _mount_options(live.fs)):
            pass  # XFS replays its log, ext4 its journal
        run(["e2fsck", "-fn", dev] if live.fs == "ext4" else ["xfs_repair", "-n", dev])


def _assert_point_is(live: Live, point: str, ref: Path) -> None:
    """Restored, `point` is the device `ref` (read under the freeze) and a clean fs."""
    image = _restore(live, point, "check.img")
    try:
        _assert_same_valid_data(ref, image)
        _fsck(live, image)
    finally:
        image.unlink(missing_ok=True)
        ref.unlink(missing_ok=True)


def test_killed_agent_resyncs_to_the_frozen_device(live: Live) -> None:
    cfg = live.config()
    live.start_agent(cfg)
    live.sync(cfg)
    live.stop_agent()
    live.start_agent(cfg)  # after a clean stop: the tracking session continues
    first = live.sync(cfg)
    assert first["disks"][0]["mode"] == "incremental", first
    live.stop_agent(signal.SIGKILL)
    time.sleep(2)  # the load goes on while no agent watches

    ref = live.top / "frozen.img"
    hook = f"dd if=$OPENBDR_DEVICES of={ref} bs=1M iflag=direct status=none"
    cfg = live.config(hook=hook, freeze_timeout=60)
    live.start_agent(cfg)
    reply = live.sync(cfg)
    live.stop_agent()
    disk = reply["disks"][0]
    assert disk["mode"] == "hash-compare", disk
    assert "did not stop cleanly" in (disk["fallback_reason"] or ""), disk

    _assert_point_is(live, reply["point"], ref)


def test_incrementals_under_load_are_the_frozen_device(live: Live) -> None:
    """Changed blocks staged while the database writes, their pages written since copied
    again under the freeze: each incremental restores to exactly what a read of the
    frozen device gives. The second stages into the memory the first one used (kept
    between syncs)."""
    ref = live.top / "frozen.img"
    hook = f"dd if=$OPENBDR_DEVICES of={ref} bs=1M iflag=direct status=none"
    cfg = live.config(hook=hook, freeze_timeout=60)
    live.start_agent(cfg)
    try:
        for _ in range(2):
            time.sleep(3)
            reply = live.sync(cfg)
            disk = reply["disks"][0]
            assert disk["mode"] == "incremental", disk
            _assert_point_is(live, reply["point"], ref)
    finally:
        live.stop_agent()
