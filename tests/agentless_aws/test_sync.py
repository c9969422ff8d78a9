"""Syncs of an EC2 instance through the fake: points byte-identical to their snapshots."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from openbdr.capture.platform import PlatformError

from ..fakes.aws import ACCESS_KEY, BLOCK, GIB, FakeAWS
from ..helpers import make_ext4, openbdr
from .conftest import assert_point_is, discard, image, open_host, run_sync, write

MIB = 1 << 20


def live(fake: FakeAWS) -> set[str]:
    return {s.id for s in fake.account.live_snapshots()}


QUICK_PLAN = """
[drill]
memory = 512
network = "none"
accel = "tcg"  # this host's nested /dev/kvm passes the drill's probe but not a BIOS boot

[[probe]]
type = "console"
pattern = "OPENBDR-GUEST-READY"
timeout = 300
"""


@pytest.mark.root
@pytest.mark.slow
def test_full_and_three_incrementals_through_throttling_and_latency(
    fake: FakeAWS, bootable: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root volume from the bootable fixture, an encrypted ext4 data volume; 10 % of EBS
    requests throttled, 20 ms per request. Each point equals the snapshot, incrementals
    read only the changed 512 KiB halves, only the newest snapshot set is kept, and the
    last point boots in a VM drill."""
    fake.latency = 0.02
    fake.throttle_rate = 0.10
    root = tmp_path / "root.img"
    subprocess.run(["cp", "--sparse=always", str(bootable), str(root)], check=True)
    content = tmp_path / "content"
    content.mkdir()
    (content / "notes.txt").write_text("first day\n" * 1000)
    data = make_ext4(tmp_path / "data.img", 1024, content)
    acc = fake.account
    vroot, vdata = acc.add_volume(root), acc.add_volume(data, encrypted=True)
    inst = acc.add_instance([vroot, vdata], name="web1")
    host = open_host(fake, inst.id)
    repo = tmp_path / "repo"
    images = {vroot.id: root, vdata.id: data}

    p = run_sync(repo, host)
    assert [d.mode for d in p.disks] == ["full", "full"]
    assert [d.name for d in p.disks] == [vroot.id, vdata.id]  # root first
    assert p.consistency == "crash"
    assert_point_is(repo, p, images, tmp_path)
    assert len(live(fake)) == 2

    for day in range(3):
        before = live(fake)
        # the guest's writes: scattered 4 KiB, one whole 512 KiB half of a 1 MiB block,
        # and a TRIM of a half written on the first day
        off = [(600 * MIB + day * 7 * MIB + k * 300 * 1024, 4096) for k in range(6)]
        half = (700 * MIB + day * 4 * MIB + BLOCK, BLOCK)  # the second half only
        touched = write(data, [*off, half])
        if day == 0:
            write(data, [(900 * MIB, BLOCK)])
            touched.add(900 * MIB // BLOCK)
        if day == 1:
            discard(data, 900 * MIB, BLOCK)
        touched_root = write(root, [(600 * MIB + day * MIB, 8192)])  # outside the partition
        p = run_sync(repo, host)
        assert [d.mode for d in p.disks] == ["incremental", "incremental"], [
            (d.mode, d.fallback_reason) for d in p.disks
        ]
        assert_point_is(repo, p, images, tmp_path)
        rec = {d.name: d for d in p.disks}
        # the changed halves only; the TRIMmed block of day 1 is recorded zero, unread
        assert rec[vdata.id].read_bytes == len(touched) * BLOCK
        assert rec[vroot.id].read_bytes == len(touched_root) * BLOCK
        now = live(fake)
        assert len(now) == 2 and not now & before  # the previous set went after the commit
    assert sum(fake.throttled.values()) > 0
    assert host.aws.retries["RequestThrottledException"] > 0

    # the last point (three incrementals on top of the full) boots from the repository
    scope = tempfile.mkdtemp(prefix="oba-")  # short: unix socket paths stay under 108 bytes
    plan = tmp_path / "plan.toml"
    plan.write_text(QUICK_PLAN)
    env = {**os.environ, "TMPDIR": scope, "OPENBDR_STATE_DIR": str(tmp_path / "state")}
    try:
        out = openbdr(
            "drill",
            "run",
            "--repo",
            str(repo),
            "--host",
            "web1",
            "--point",
            p.id,
            "--plan",
            str(plan),
            "--json",
            env=env,
            timeout=900,
        )
    finally:
        shutil.rmtree(scope, ignore_errors=True)
    rep = json.loads(out.stdout)
    assert rep["verdict"] == "passed", rep
    assert "marker=aws-point" in rep["console_tail"]


def test_paging_with_empty_pages_and_an_expired_next_token(fake: FakeAWS, tmp_path: Path) -> None:
    fake.ebs.scan_window = 64  # 32 pages over 1 GiB, most of them empty
    vol = tmp_path / "v.img"
    image(vol, [(0, 2 * MIB), (300 * MIB, 3 * MIB), (1000 * MIB, MIB)])
    acc = fake.account
    v = acc.add_volume(vol)
    inst = acc.add_instance([v])
    seen = {"pages": 0}

    def expire_once(op: str, q: dict[str, str]) -> None:
        if op in ("ebs:ListSnapshotBlocks", "ebs:ListChangedBlocks") and "pageToken" in q:
            seen["pages"] += 1
            if seen["pages"] == 5:
                acc.advance(3601)  # 60 min later: this page's NextToken has expired

    fake.hooks.append(expire_once)
    host = open_host(fake, inst.id)
    repo = tmp_path / "repo"
    p = run_sync(repo, host)
    assert_point_is(repo, p, {v.id: vol}, tmp_path)
    assert fake.ebs.refused.get("INVALID_PAGE_TOKEN") == 1
    assert fake.calls["ebs:ListSnapshotBlocks"] >= 32  # followed empty pages to the end

    write(vol, [(500 * MIB, MIB), (1001 * MIB, 4096)])
    seen["pages"] = 0
    p = run_sync(repo, host)
    assert p.disks[0].mode == "incremental"
    assert_point_is(repo, p, {v.id: vol}, tmp_path)
    assert fake.ebs.refused.get("INVALID_PAGE_TOKEN") == 2
    assert fake.calls["ebs:ListChangedBlocks"] >= 16


def test_deleted_base_snapshot_gives_a_full_pass_that_says_why(
    fake: FakeAWS, tmp_path: Path
) -> None:
    vol = image(tmp_path / "v.img", [(0, 4 * MIB)])
    acc = fake.account
    v = acc.add_volume(vol)
    inst = acc.add_instance([v])
    host = open_host(fake, inst.id)
    repo = tmp_path / "repo"
    run_sync(repo, host)
    (base,) = live(fake)
    host.aws.ec2.delete_snapshot(SnapshotId=base)  # someone cleaned up the console
    write(vol, [(10 * MIB, MIB)])
    p = run_sync(repo, host)
    assert p.disks[0].mode == "hash-compare"
    assert "is gone" in (p.disks[0].fallback_reason or "")
    assert_point_is(repo, p, {v.id: vol}, tmp_path)


def test_volume_attached_between_syncs(fake: FakeAWS, tmp_path: Path) -> None:
    a = image(tmp_path / "a.img", [(0, 2 * MIB)])
    acc = fake.account
    va = acc.add_volume(a)
    inst = acc.add_instance([va])
    host = open_host(fake, inst.id)
    repo = tmp_path / "repo"
    run_sync(repo, host)
    b = image(tmp_path / "b.img", [(5 * MIB, 3 * MIB)], seed=2)
    vb = acc.add_volume(b)
    acc.attach(inst.id, vb.id)
    write(a, [(8 * MIB, 4096)])
    p = run_sync(repo, host)
    modes = {d.name: (d.mode, d.fallback_reason or "") for d in p.disks}
    assert modes[va.id][0] == "incremental"
    assert modes[vb.id][0] == "full" and "is new since" in modes[vb.id][1]
    assert_point_is(repo, p, {va.id: a, vb.id: b}, tmp_path)


def test_corrupted_block_is_read_again_and_never_stored(
    fake: FakeAWS, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vol = image(tmp_path / "v.img", [(0, 6 * MIB)])
    acc = fake.account
    v = acc.add_volume(vol)
    inst = acc.add_instance([v])
    fake.ebs.corrupt_next = 3
    repo = tmp_path / "repo"
    with caplog.at_level(logging.WARNING, logger="openbdr.capture.aws"):
        p = run_sync(repo, open_host(fake, inst.id))
    assert fake.ebs.corrupt_served == 3
    assert sum("checksum" in r.getMessage() for r in caplog.records) == 3
    assert_point_is(repo, p, {v.id: vol}, tmp_path)


def test_expired_block_tokens_are_looked_up_again(fake: FakeAWS, tmp_path: Path) -> None:
    vol = image(tmp_path / "v.img", [(0, 3 * MIB), (700 * MIB, MIB)])
    acc = fake.account
    v = acc.add_volume(vol)
    inst = acc.add_instance([v])
    done = []

    def week_later(op: str, q: dict[str, str]) -> None:
        if op == "ebs:GetSnapshotBlock" and not done:
            done.append(1)
            acc.advance(8 * 86400)  # every token listed so far is past its 7 days

    fake.hooks.append(week_later)
    repo = tmp_path / "repo"
    p = run_sync(repo, open_host(fake, inst.id, in_flight=4))
    assert fake.ebs.refused.get("INVALID_BLOCK_TOKEN", 0) >= 1
    assert_point_is(repo, p, {v.id: vol}, tmp_path)


def test_leftovers_of_killed_syncs_are_deleted_by_tag(fake: FakeAWS, tmp_path: Path) -> None:
    """The newest set of a killed run is read again (its checkpoint applies); older sets,
    and sets past `resume_max_age`, are deleted; snapshots not ours are left alone."""
    vol = image(tmp_path / "v.img", [(0, MIB)])
    acc = fake.account
    v = acc.add_volume(vol)
    inst = acc.add_instance([v])
    other = acc.snapshot_volume(v, "someone else's", {"team": "db"})
    impatient = open_host(fake, inst.id, resume_max_age=0)  # never reuses a set
    host = open_host(fake, inst.id)
    runs = []
    for _ in range(2):  # two runs that died before their points committed
        killed = impatient.snapshot(None)
        killed.session.pool.shutdown()
        runs.append(set(killed.session.snapshots.values()))
    assert not runs[0] & live(fake)  # the older set went when the second run started
    p = run_sync(tmp_path / "repo", host)  # the newest set is read again
    assert p.disks[0].mode == "full"
    assert p.token["value"][v.id]["value"]["snapshot"] in runs[1]
    assert live(fake) == runs[1] | {other.id}

    full = run_sync(tmp_path / "repo", host, full=True)  # a committed set is no leftover
    assert full.token["value"][v.id]["value"]["snapshot"] not in runs[1]
    p = full
    stale = host.snapshot(p_token(p))  # killed again, and then too old to resume
    stale.session.pool.shutdown()
    p2 = run_sync(tmp_path / "repo", impatient)
    assert p2.disks[0].mode == "incremental"
    assert not set(stale.session.snapshots.values()) & live(fake)
    assert len(live(fake) - {other.id}) == 1


def p_token(point: Any) -> Any:
    from openbdr.capture.base import ChangeToken

    return ChangeToken.from_json(point.token)


def test_a_killed_sync_resumes_from_its_checkpoint(
    fake: FakeAWS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openbdr.capture.agentless import AgentlessSnapshot
    from openbdr.store.target import init_target
    from openbdr.sync import SyncOptions, SyncStopped, sync

    vol = image(tmp_path / "v.img", [(0, 40 * MIB)])  # 80 EBS blocks
    acc = fake.account
    v = acc.add_volume(vol)
    inst = acc.add_instance([v])
    host = open_host(fake, inst.id, in_flight=2)
    repo = tmp_path / "repo"
    # the first run dies mid-way: its checkpoint is saved, nothing is released (SIGKILL)
    monkeypatch.setattr(
        AgentlessSnapshot, "release", lambda self: self.session.pool.shutdown(wait=True)
    )
    seen = {"n": 0}

    def stop() -> bool:
        seen["n"] += 1
        return seen["n"] > 20

    opts = SyncOptions(threads=2, should_stop=stop, checkpoint_every=0.0)
    with pytest.raises(SyncStopped):
        sync(init_target(str(repo)), host, opts)
    monkeypatch.undo()
    before = fake.calls["ebs:GetSnapshotBlock"]
    p = run_sync(repo, host)
    again = fake.calls["ebs:GetSnapshotBlock"] - before
    assert p.disks[0].mode == "full"
    assert again < 70, again  # the blocks done before the kill were not read again
    assert_point_is(repo, p, {v.id: vol}, tmp_path)


def test_kms_denied_names_the_permission_and_keeps_nothing(fake: FakeAWS, tmp_path: Path) -> None:
    vol = image(tmp_path / "v.img", [(0, MIB)])
    acc = fake.account
    v = acc.add_volume(vol, encrypted=True)
    inst = acc.add_instance([v])
    fake.ebs.denied[ACCESS_KEY] = {"kms:Decrypt"}
    with pytest.raises(PlatformError, match="kms:Decrypt") as err:
        run_sync(tmp_path / "repo", open_host(fake, inst.id))
    assert v.kms_key_id and v.kms_key_id in str(err.value)
    assert live(fake) == set()  # the new snapshot went with the failed run


def test_access_denied_and_bad_credentials_are_one_clear_line(
    fake: FakeAWS, tmp_path: Path
) -> None:
    vol = image(tmp_path / "v.img", [(0, MIB)])
    acc = fake.account
    inst = acc.add_instance([acc.add_volume(vol)])
    fake.ebs.denied[ACCESS_KEY] = {"ebs:GetSnapshotBlock"}
    with pytest.raises(PlatformError, match="grant ebs:GetSnapshotBlock"):
        run_sync(tmp_path / "repo", open_host(fake, inst.id))
    fake.ebs.denied.clear()
    fake.keys = {ACCESS_KEY: "another secret"}
    with pytest.raises(PlatformError, match="credentials were refused"):
        run_sync(tmp_path / "repo", open_host(fake, inst.id))
    assert GIB  # the volume is 1 GiB: EBS sizes are whole GiB
