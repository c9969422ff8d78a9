"""The libvirt source against a real libvirtd and a running guest that writes continuously."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.capture.agentless import AgentlessSnapshot, is_owned
from openbdr.capture.base import ChangeToken, Host
from openbdr.capture.platform import open_platform
from openbdr.capture.registry import open_source
from openbdr.extents import to_blocks

from ..helpers import ROOT, openbdr, sha256
from .conftest import SEQ_OFFSETS, Guest, Libvirtd, domain_type, sync_point

pytestmark = [pytest.mark.root, pytest.mark.slow]

HOST = "kvm-web1"
QUICK_PLAN = """
[drill]
memory = 256
network = "none"

[[probe]]
type = "console"
pattern = "OPENBDR-GUEST-READY"
timeout = 300
"""


@dataclass
class Seen:
    """What the spy read of one snapshot, independently of the sync."""

    exports: dict[str, Path]
    #: per disk, the extents the job's dirty bitmap marks (incremental disks)
    dirty: dict[str, list[tuple[int, int]]]
    snap: AgentlessSnapshot


@dataclass
class Env:
    lv: Libvirtd
    guest: Guest
    repo: str
    scratch: Path
    work: Path
    seen: list[Seen] = field(default_factory=list)

    def spec(self, **options: Any) -> dict[str, Any]:
        return {
            "type": "libvirt",
            "platform": {
                "endpoint": self.lv.uri,
                "options": {"scratch_dir": str(self.scratch), **options},
            },
            "vm": self.guest.name,
        }


def _dirty(uri: str, bitmap: str) -> list[tuple[int, int]]:
    """Extents the export's dirty bitmap marks, read with nbdinfo (not the source's code)."""
    out = subprocess.run(
        ["nbdinfo", "--json", f"--map={bitmap}", uri], capture_output=True, text=True, check=True
    ).stdout
    return [(e["offset"], e["length"]) for e in json.loads(out) if e["type"] & 1]


class Spy(Host):
    """Reads every disk of each snapshot from the backup job's own NBD export with
    qemu-img, during the job, before the sync reads it: the point must equal that."""

    def __init__(self, inner: Host, env: Env) -> None:
        self.inner = inner
        self.name = inner.name
        self.env = env

    def describe(self) -> str:
        return self.inner.describe()

    def snapshot(self, since: ChangeToken | None) -> AgentlessSnapshot:
        snap = self.inner.snapshot(since)
        assert isinstance(snap, AgentlessSnapshot)
        k = len(self.env.seen)
        exports, dirty = {}, {}
        for d in snap.disks:
            uri = snap.session.export_uri(d.name)
            assert uri is not None
            out = self.env.work / f"export{k}-{d.name}.raw"
            subprocess.run(
                ["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(out)], check=True
            )
            exports[d.name] = out
            bitmap = getattr(d, "bitmap", None)
            if d.incremental and bitmap:
                dirty[d.name] = _dirty(uri, bitmap)
        self.env.seen.append(Seen(exports, dirty, snap))
        return snap


def sync_host(env: Env, host: Host) -> Any:
    return sync_point(env.repo, host)


def restored(env: Env, point: str, work: Path) -> dict[str, Path]:
    out = work / f"restore-{point}"
    out.mkdir()
    openbdr("restore", "--repo", env.repo, "--host", HOST, "--point", point, "--to", str(out))
    return {p.stem: p for p in out.glob("*.img")}


def seq_in(path: Path, disk: str) -> int:
    with open(path, "rb") as f:
        f.seek(SEQ_OFFSETS[disk])
        return int(f.read(16) or b"0")


def owned_checkpoints(env: Env) -> list[str]:
    return [c.getName() for c in env.guest.dom.listAllCheckpoints(0) if is_owned(c.getName(), HOST)]


def backup_job(env: Env) -> str | None:
    import libvirt

    try:
        return env.guest.dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return None


@pytest.fixture(scope="module")
def env(libvirtd: Libvirtd, boot_image: Path) -> Iterator[Env]:
    from openbdr.store.target import init_target

    work = Path(tempfile.mkdtemp(prefix="obg-", dir="/tmp"))
    guest = Guest(libvirtd, work, boot_image, "obt-web1")
    try:
        guest.start_writer()
        repo = str(work / "repo")
        init_target(repo)
        yield Env(libvirtd, guest, repo, work / "scratch", work)
    finally:
        guest.close()
        subprocess.run(["rm", "-rf", str(work)], check=False)


def test_discovery_finds_the_running_guest_with_its_disks(env: Env) -> None:
    p = open_platform("libvirt", env.lv.uri, {})
    try:
        assert "libvirt 9." in p.test() or "libvirt " in p.test()
        vms = {v.name: v for v in p.discover()}
        vm = vms[env.guest.name]
        assert vm.power_state == "running"
        assert vm.id == env.guest.dom.UUIDString()
        assert [(d.name, d.size, d.bus, d.format) for d in vm.disks] == [
            ("vda", 256 << 20, "virtio", "qcow2"),
            ("vdb", 64 << 20, "virtio", "qcow2"),
        ]
        assert vm.disks[0].backing == str(env.guest.vda) and vm.disks[0].unsupported is None
        assert p.vm(vm.id).name == vm.name == p.vm(vm.name).name
    finally:
        p.close()


def test_full_then_three_incrementals_equal_the_backup_jobs_exports(env: Env) -> None:
    host = Spy(open_source(HOST, env.spec()), env)
    points = []
    for k in range(4):
        if k:
            time.sleep(2)  # the guest writes meanwhile
        before = env.guest.seq("vdb")
        points.append(sync_host(env, host))
        seen = env.seen[-1]
        assert seq_in(seen.exports["vdb"], "vdb") >= before  # the guest kept writing
        modes = [d.mode for d in points[-1].disks]
        assert modes == (["full", "full"] if k == 0 else ["incremental", "incremental"])
        # the domain has a guest agent channel, but no agent runs in the guest
        assert points[-1].consistency == "crash"
        assert (
            [n for n in points[-1].notes if n.startswith("quiesce:")]
            == [
                n
                for n in seen.snap.notes
                if n.startswith("quiesce: the guest agent did not freeze")
            ]
            != []
        )
        if k:
            for d in points[-1].disks:
                dirty = sum(n for _, n in seen.dirty[d.name])
                rounded = len(list(to_blocks(seen.dirty[d.name], d.size))) * BLOCK_SIZE
                # only the bitmap's extents are read (less what reads as zero)
                assert d.read_bytes <= min(dirty, 1.1 * rounded), (d.name, dirty, d.read_bytes)
            assert points[-1].disks[1].read_bytes > 0  # vdb changed
        # one backup job at a time, ended; one checkpoint kept as the next base
        assert backup_job(env) is None
        assert len(owned_checkpoints(env)) == 1
        assert not list(env.scratch.iterdir())

    # the quiesce outcome is in the point as stored, and `openbdr points` shows it
    listed = json.loads(openbdr("points", "--repo", env.repo, "--host", HOST, "--json").stdout)
    assert [r["notes"] for r in listed[-4:]] == [p.notes for p in points]
    table = openbdr(
        "points", "--repo", env.repo, "--host", HOST, env={**os.environ, "COLUMNS": "400"}
    )
    assert "notes" in table.stdout and "the guest agent did not freeze" in table.stdout

    for k, point in enumerate(points):
        files = restored(env, point.id, env.work)
        seen = env.seen[k]
        for disk in ("vda", "vdb"):
            assert sha256(files[disk]) == sha256(seen.exports[disk]), (k, disk)
        # both disks from the same instant: the writer bumps vda, then vdb
        a, b = seq_in(files["vda"], "vda"), seq_in(files["vdb"], "vdb")
        assert b > 0 and a - b in (0, 1), (k, a, b)


def test_a_deleted_checkpoint_gives_a_full_pass_that_says_why(env: Env) -> None:
    if not owned_checkpoints(env):
        sync_host(env, open_source(HOST, env.spec()))
    for name in owned_checkpoints(env):
        env.guest.dom.checkpointLookupByName(name, 0).delete(0)
    host = Spy(open_source(HOST, env.spec()), env)
    point = sync_host(env, host)
    for d in point.disks:
        assert d.mode == "hash-compare"
        assert "gone" in (d.fallback_reason or "") and "full pass" in (d.fallback_reason or "")
    files = restored(env, point.id, env.work)
    for disk in ("vda", "vdb"):
        assert sha256(files[disk]) == sha256(env.seen[-1].exports[disk])
    # the next one is incremental again
    point = sync_host(env, host)
    assert [d.mode for d in point.disks] == ["incremental", "incremental"]


def test_quiesce_never_and_required_say_what_they_did(env: Env) -> None:
    """quiesce=never: crash-consistent, and the point says it was not asked; quiesce=required
    with a guest agent channel but no agent answering: one clear error, nothing left."""
    from openbdr.capture.platform import PlatformError

    point = sync_host(env, open_source(HOST, env.spec(quiesce="never")))
    assert point.consistency == "crash"
    assert point.notes == ["quiesce: not asked (option quiesce=never): crash-consistent"]
    before = owned_checkpoints(env)
    with pytest.raises(PlatformError) as err:
        sync_host(env, open_source(HOST, env.spec(quiesce="required")))
    assert "did not freeze its file systems" in str(err.value), err.value
    assert "qemu-guest-agent" in (err.value.hint or ""), err.value.hint
    assert backup_job(env) is None and owned_checkpoints(env) == before
    assert not list(env.scratch.iterdir())


PROXY = """
from openbdr.capture.registry import open_source
from openbdr.store.target import open_target
from openbdr.sync import SyncOptions, sync
spec = {spec!r}
host = open_source({host!r}, spec)
sync(open_target({repo!r}), host, SyncOptions(bwlimit=256 << 10, checkpoint_every=0.5))
"""


def test_a_killed_proxy_leaves_nothing_the_next_run_does_not_clean(env: Env) -> None:
    before = set(owned_checkpoints(env))
    proc = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            "-c",
            PROXY.format(spec=env.spec(), host=HOST, repo=env.repo),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while backup_job(env) is None or not set(owned_checkpoints(env)) - before:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the proxy never started a backup"
            time.sleep(0.1)
        time.sleep(1.0)  # reading
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    # what the killed proxy left: a backup job, its checkpoint, its scratch directory
    assert backup_job(env) is not None
    left = set(owned_checkpoints(env)) - before
    assert left and list(env.scratch.iterdir())

    host = Spy(open_source(HOST, env.spec()), env)
    point = sync_host(env, host)
    assert backup_job(env) is None
    assert not list(env.scratch.iterdir())
    assert owned_checkpoints(env) == [point.token["value"]["vda"]["value"]["base"]]
    assert not left & set(owned_checkpoints(env))
    files = restored(env, point.id, env.work)
    for disk in ("vda", "vdb"):
        assert sha256(files[disk]) == sha256(env.seen[-1].exports[disk])


def test_a_point_passes_a_vm_drill(env: Env, tmp_path: Path) -> None:
    from openbdr.store.target import open_target

    if not open_target(env.repo).points(HOST):
        sync_host(env, open_source(HOST, env.spec()))
    plan = tmp_path / "plan.toml"
    plan.write_text(QUICK_PLAN)
    scope = tempfile.mkdtemp(prefix="obd-", dir="/tmp")
    try:
        proc = openbdr(
            "drill",
            "run",
            "--repo",
            env.repo,
            "--host",
            HOST,
            "--point",
            "latest",
            "--plan",
            str(plan),
            "--json",
            # the drills' probe passes on a nested PVM /dev/kvm that cannot boot BIOS guests
            "--accel",
            "kvm" if domain_type() == "kvm" else "tcg",
            env={**os.environ, "TMPDIR": scope, "OPENBDR_STATE_DIR": str(tmp_path / "state")},
            timeout=900,
        )
    finally:
        subprocess.run(["rm", "-rf", scope], check=False)
    rep = json.loads(proc.stdout)
    assert rep["verdict"] == "passed", rep
    assert "OPENBDR-GUEST-READY" in rep["console_tail"]
