"""The flow every agentless source shares, over a platform held in memory.

The platform here is the smallest that keeps the promises a real one makes (snapshots
are frozen copies, changes are tracked per snapshot, names list what exists), so that
the shared flow's own decisions are tested alone: which snapshot is deleted when, what a
killed run leaves and the next removes, when a disk falls back to a full pass and why.
The libvirt tests run the same flow against a real hypervisor.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.capture.agentless import (
    AgentlessDisk,
    AgentlessHost,
    DiskChange,
    DiskPlan,
    PlatformOps,
    Session,
    disk_changes,
    is_owned,
    owned_name,
    owned_prefix,
)
from openbdr.extents import Extent, normalize
from openbdr.store.target import init_target, open_target

from ..helpers import openbdr
from .conftest import sync_point

GRAIN = 64 << 10


class MemDisk(AgentlessDisk):
    def __init__(self, plan: DiskPlan, base: str, data: bytes, dirty: set[int]) -> None:
        super().__init__("mem", plan, base)
        self.data = data
        self.dirty = dirty
        self.read = 0

    def allocation(self) -> tuple[list[Extent], list[Extent]]:
        grains = range(0, self.size, GRAIN)
        nz = [Extent(o, GRAIN) for o in grains if any(self.data[o : o + GRAIN])]
        zero = [Extent(o, GRAIN) for o in grains if not any(self.data[o : o + GRAIN])]
        return normalize(nz), normalize(zero)

    def changed(self) -> list[Extent]:
        return normalize(Extent(g * GRAIN, GRAIN) for g in self.dirty)

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        n = max(0, min(len(buf), self.size - offset))
        buf[:n] = self.data[offset : offset + n]
        self.read += n
        return n


class MemOps(PlatformOps):
    source = "mem"

    def __init__(self) -> None:
        self.disks_now: dict[str, bytearray] = {}
        #: snapshot name -> (disk copies, per disk the grains written since it)
        self.snaps: dict[str, tuple[dict[str, bytes], dict[str, set[int]]]] = {}
        self.sessions: list[str] = []  # open read sessions (a killed run leaves one)
        self.fail_take = False

    def write(self, disk: str, offset: int, data: bytes) -> None:
        self.disks_now[disk][offset : offset + len(data)] = data
        for _, dirty in self.snaps.values():
            if disk in dirty:
                dirty[disk].update(range(offset // GRAIN, (offset + len(data) - 1) // GRAIN + 1))

    def disks(self) -> dict[str, int]:
        return {n: len(d) for n, d in self.disks_now.items()}

    def owned(self, host: str) -> list[str]:
        return sorted(n for n in self.snaps if is_owned(n, host))

    def tracks(self, snapshot: str) -> set[str]:
        return set(self.snaps[snapshot][1]) if snapshot in self.snaps else set()

    def cleanup(self, host: str) -> list[str]:
        gone = [s for s in self.sessions if is_owned(s, host)]
        self.sessions = [s for s in self.sessions if s not in gone]
        return gone

    def take(self, host: str, name: str, base: str | None, plans: list[DiskPlan]) -> Session:
        if self.fail_take:
            raise RuntimeError("the platform failed")
        copies = {n: bytes(d) for n, d in self.disks_now.items()}
        self.snaps[name] = (copies, {n: set() for n in copies})
        self.sessions.append(name)
        disks = [
            MemDisk(
                p,
                name,
                copies[p.name],
                set(self.snaps[base][1][p.name]) if base and p.incremental else set(),
            )
            for p in plans
        ]
        return Session(list(disks), "crash", keep=name, created=name)

    def end(self, session: Session) -> None:
        if session.created in self.sessions:
            self.sessions.remove(session.created)

    def delete(self, snapshot: str) -> None:
        del self.snaps[snapshot]


@pytest.fixture
def ops() -> MemOps:
    o = MemOps()
    o.disks_now = {"sda": bytearray(8 * BLOCK_SIZE), "sdb": bytearray(4 * BLOCK_SIZE)}
    o.write("sda", 0, os.urandom(3 * BLOCK_SIZE))
    o.write("sdb", 2 * BLOCK_SIZE + 4096, os.urandom(8192))
    o.snaps.clear()  # the writes above came before any snapshot
    return o


def _restored(repo: str, host: str, point: str, tmp: Path) -> dict[str, bytes]:
    out = tmp / f"r-{point}"
    out.mkdir()
    openbdr("restore", "--repo", repo, "--host", host, "--point", point, "--to", str(out))
    return {p.stem: p.read_bytes() for p in out.glob("*.img")}


def test_names_mark_what_a_host_owns() -> None:
    a, b = owned_name("Web 1", 1_800_000_000.0), owned_name("Web 1", 1_800_000_000.0)
    assert a != b and a.startswith("openbdr-web-1-20270115T080000.000-")
    assert is_owned(a, "Web 1") and not is_owned(a, "web-10") and not is_owned("snap-1", "Web 1")
    assert owned_prefix("web1") == "openbdr-web1-" and not is_owned("openbdr-web10-x", "web1")
    assert owned_name("h", 1e9) < owned_name("h", 1e9 + 0.001) < owned_name("h", 2e9)


def test_disk_changes() -> None:
    got = disk_changes({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 4, "d": 5})
    assert got == [
        DiskChange("b", "resized", 2, 4),
        DiskChange("d", "added", None, 5),
        DiskChange("c", "removed", 3, None),
    ]


def test_the_old_base_goes_only_once_the_new_point_commits(ops: MemOps, tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_target(repo)
    host = AgentlessHost("h1", ops, "memory")
    p1 = sync_point(repo, host)
    assert [d.mode for d in p1.disks] == ["full", "full"]
    (base,) = ops.owned("h1")
    assert not ops.sessions

    # a snapshot that never commits: the new one goes, the base stays
    ops.write("sda", 5 * BLOCK_SIZE + 100, b"x" * 70_000)
    with host.snapshot(ops_token(repo, "h1")) as snap:
        assert [d.incremental for d in snap.disks] == [True, True]
    assert ops.owned("h1") == [base] and not ops.sessions

    # the next sync still reads every change since the base, and only those
    p2 = sync_point(repo, host)
    assert [d.mode for d in p2.disks] == ["incremental", "incremental"]
    assert p2.disks[0].read_bytes == 2 * GRAIN and p2.disks[1].read_bytes == 0
    assert ops.owned("h1") != [base] and len(ops.owned("h1")) == 1
    got = _restored(repo, "h1", p2.id, tmp_path)
    assert got == {n: bytes(d) for n, d in ops.disks_now.items()}


def ops_token(repo: str, host: str) -> object:
    from openbdr.capture.base import ChangeToken

    return ChangeToken.from_json(open_target(repo).latest(host).token)


def test_a_killed_runs_leftovers_are_removed_and_others_are_not(
    ops: MemOps, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    init_target(repo)
    host = AgentlessHost("h1", ops, "memory")
    sync_point(repo, host)
    (base,) = ops.owned("h1")
    # a killed run: its snapshot and read session stay; another host's and a foreign one too
    snap = host.snapshot(ops_token(repo, "h1"))
    killed = snap.session.created
    ops.take("h2", owned_name("h2"), None, [])
    ops.snaps["manual-snapshot"] = ({}, {})
    assert killed in ops.sessions and killed in ops.owned("h1")
    ops.write("sdb", 0, b"y" * 10)
    p = sync_point(repo, host)
    assert killed not in ops.snaps and killed not in ops.sessions
    assert [d.mode for d in p.disks] == ["incremental", "incremental"]  # the base survived
    assert base not in ops.snaps  # and went once the new point committed
    assert "manual-snapshot" in ops.snaps and len(ops.owned("h2")) == 1


def test_lost_tracking_and_changed_disks_fall_back_to_full_passes(
    ops: MemOps, tmp_path: Path
) -> None:
    repo = str(tmp_path / "repo")
    init_target(repo)
    host = AgentlessHost("h1", ops, "memory")
    sync_point(repo, host)
    ops.snaps.clear()  # the platform lost the base (deleted by an operator, CBT reset)
    with host.snapshot(ops_token(repo, "h1")) as snap:
        for d in snap.disks:
            assert not d.incremental and "gone" in (d.fallback_reason or "")
        assert snap.changes == []
    p = sync_point(repo, host)
    assert [d.mode for d in p.disks] == ["hash-compare", "hash-compare"]
    assert all("gone" in (d.fallback_reason or "") for d in p.disks)

    # a disk added, one resized, one removed: each said once, each read as it must be
    ops.disks_now["sdc"] = bytearray(os.urandom(BLOCK_SIZE))
    ops.disks_now["sda"] += bytearray(BLOCK_SIZE)
    del ops.disks_now["sdb"]
    with host.snapshot(ops_token(repo, "h1")) as snap:
        assert {(c.disk, c.change) for c in snap.changes} == {
            ("sda", "resized"),
            ("sdb", "removed"),
            ("sdc", "added"),
        }
        why = {d.name: (d.incremental, d.fallback_reason) for d in snap.disks}
    assert why["sda"][0] is False and "resized" in (why["sda"][1] or "")
    assert why["sdc"][0] is False and "new" in (why["sdc"][1] or "")
    p = sync_point(repo, host)
    got = _restored(repo, "h1", p.id, tmp_path)
    assert got == {n: bytes(d) for n, d in ops.disks_now.items()}


def test_a_failing_platform_leaves_nothing(ops: MemOps, tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    init_target(repo)
    host = AgentlessHost("h1", ops, "memory")
    sync_point(repo, host)
    before = ops.owned("h1")
    ops.fail_take = True
    with pytest.raises(RuntimeError):
        sync_point(repo, host)
    assert ops.owned("h1") == before and not ops.sessions
    assert len(open_target(repo).points("h1")) == 1
