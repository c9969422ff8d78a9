"""The AWS EBS volume backend against the faithful fake (tests/fakes/aws): what the EBS
direct APIs are asked, a gateway restart in the middle of a pending snapshot, throttling,
5xx and corrupted reads, a pending snapshot lost while the gateway was down, and a sync
through a gateway into EBS that restores byte-identical."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.chunk import Codec
from openbdr.errors import CorruptionError
from openbdr.store.block.ebsvol import CARRY, T_POINT, T_VOLUME, EbsStore, EbsVolume
from openbdr.store.block.target import BlockTarget
from openbdr.store.block.volumes import VolumeError, open_store
from openbdr.store.target import WriteOptions

from ..fakes.aws import FakeAWS
from .conftest import GatewayProc, ebs_url
from .driver import drive, read_back
from .images import ext4_image, ext4_write

MiB = BLOCK_SIZE


def _ebs(fake: FakeAWS, **extra: str) -> EbsStore:
    store = open_store(ebs_url(fake, **extra))
    assert isinstance(store, EbsStore)
    return store


def _vol(store: EbsStore, name: str, size: int | None = None) -> EbsVolume:
    vol = store.open(name, size)
    assert isinstance(vol, EbsVolume)
    return vol


def _tags(fake: FakeAWS, snap_id: str) -> dict[str, str]:
    return fake.account.snapshots[snap_id].tags


def test_a_restarted_gateway_finishes_the_pending_snapshot(fake_aws: FakeAWS) -> None:
    """Blocks put before a restart stay in the pending snapshot; the completion counts
    every block written across both processes; a kill between tagging and completing
    leaves a snapshot the next open completes."""
    fake = fake_aws
    store = _ebs(fake)
    vol = _vol(store, "db1--sda", 6 * MiB)
    first = {i: os.urandom(MiB) for i in range(6)}
    for i, b in first.items():
        vol.write(i * MiB, b)
    vol.flush()
    assert vol.snapshot("p1").size == 6 * MiB
    p1 = vol.snaps[-1].id
    assert fake.ebs.changed_counts[p1] == len(fake.ebs.puts[p1]) == 12  # 512 KiB halves
    assert fake.account.snapshots[p1].tags[T_POINT] == "p1"
    b1, b4 = os.urandom(MiB), os.urandom(MiB)
    vol.write(MiB, b1)
    vol.flush()  # a gateway checkpoint: what was written is counted on the snapshot
    pending = vol.pending
    assert pending is not None
    # the gateway is SIGKILLed: nothing of the process survives but EBS
    store2 = _ebs(fake)
    vol2 = _vol(store2, "db1--sda")
    assert vol2.pending is not None and vol2.pending.id == pending.id
    assert not vol2.lost_writes()
    vol2.write(4 * MiB, b4)
    vol2.snapshot("p2")
    p2 = vol2.snaps[-1].id
    assert fake.ebs.changed_counts[p2] == len(fake.ebs.puts[p2]) == 4
    assert fake.account.snapshots[p2].blocks.keys() >= set(range(12))  # the parent's too
    want = {**first, 1: b1, 4: b4}
    for i in range(6):
        assert vol2.read_snapshot("p1", i * MiB, MiB) == first[i], i
        assert vol2.read_snapshot("p2", i * MiB, MiB) == want[i], i
    # killed after tagging the pending snapshot with its point, before CompleteSnapshot
    vol2.write(0, b4)
    vol2.flush()
    assert vol2.pending is not None
    vol2._tag(vol2.pending.id, {T_POINT: "p3"})
    vol3 = _vol(_ebs(fake), "db1--sda")
    assert [s.name for s in vol3.snapshots()] == ["p1", "p2", "p3"]
    assert vol3.read_snapshot("p3", 0, MiB) == b4
    assert vol3.snapshot("p3").size == 6 * MiB  # the retried commit: the same snapshot
    assert sum(1 for s in fake.account.live_snapshots() if not s.deleted) == 3


def test_throttling_errors_and_bad_reads_never_corrupt(fake_aws: FakeAWS) -> None:
    fake = fake_aws
    store = _ebs(fake, retries="12")
    vol = _vol(store, "web1--sda", 4 * MiB)
    data = [os.urandom(MiB) for _ in range(4)]
    fake.throttle_rate, fake.error_rate, fake.ec2_throttle_rate = 0.3, 0.1, 0.2
    for i, b in enumerate(data):
        vol.write(i * MiB, b)
    vol.snapshot("p1")
    fake.ebs.corrupt_next = 3  # bits flipped on the way: read again, never returned
    assert vol.read_snapshot("p1", 0, 4 * MiB) == b"".join(data)
    assert fake.throttled and fake.ebs.corrupt_served == 3
    fake.throttle_rate = fake.error_rate = fake.ec2_throttle_rate = 0.0
    # a block whose every read fails its checksum: a corruption error, not its bytes
    snap = vol.snaps[-1].id
    fake.ebs.corrupt[(snap, 3)] = 100
    with pytest.raises(CorruptionError, match="checksum"):
        vol.read_snapshot("p1", MiB + MiB // 2, MiB // 2)
    fake.ebs.corrupt.clear()
    # throttled past every retry: one clear error line, the earlier snapshot intact
    few = _vol(_ebs(fake, retries="2"), "web1--sda")
    fake.throttle_rate = 1.0
    with pytest.raises(VolumeError, match="RequestThrottledException"):
        few.write(0, os.urandom(MiB))
    fake.throttle_rate = 0.0
    assert few.read_snapshot("p1", 0, 4 * MiB) == b"".join(data)


def test_a_pending_snapshot_lost_while_down_is_reported(fake_aws: FakeAWS) -> None:
    """EBS cancels a pending snapshot left idle too long: the writes since the last point
    are gone, and the volume says so instead of pretending to hold them."""
    fake = fake_aws
    vol = _vol(_ebs(fake), "app--sdb", 2 * MiB)
    vol.write(0, os.urandom(2 * MiB))
    vol.snapshot("p1")
    vol.write(0, os.urandom(MiB))
    assert vol.pending is not None
    fake.account.delete_snapshot(vol.pending.id)  # what a cancelled snapshot amounts to
    again = _vol(_ebs(fake), "app--sdb")
    assert again.lost_writes() and again.pending is None
    assert [s.name for s in again.snapshots()] == ["p1"]
    again.write(MiB, os.urandom(MiB))
    again.snapshot("p2")
    assert not _vol(_ebs(fake), "app--sdb").lost_writes()


def test_deleting_the_newest_point_keeps_the_live_volume(fake_aws: FakeAWS) -> None:
    """The head snapshot the live volume starts from is only untagged when its point goes,
    and deleted from EC2 once the next snapshot exists."""
    fake = fake_aws
    store = _ebs(fake)
    vol = _vol(store, "h--sda", 2 * MiB)
    a = os.urandom(2 * MiB)
    vol.write(0, a)
    vol.snapshot("p1")
    head = vol.snaps[-1].id
    vol.delete_snapshot("p1")
    assert vol.snapshots() == [] and head in fake.account.snapshots
    assert not fake.account.snapshots[head].deleted
    assert store.names() == ["h--sda"]
    reopened = _vol(_ebs(fake), "h--sda")
    assert reopened.snapshots() == [] and reopened.head is not None
    b = os.urandom(MiB)
    reopened.write(MiB, b)
    reopened.snapshot("p2")
    assert fake.account.snapshots[head].deleted
    assert reopened.read_snapshot("p2", 0, 2 * MiB) == a[:MiB] + b
    _ebs(fake).delete("h--sda")
    assert _ebs(fake).names() == []
    assert all(T_VOLUME not in s.tags for s in fake.account.live_snapshots())


@pytest.mark.parametrize("backend_url", ["ebs"], indirect=True)
def test_sync_through_a_gateway_into_ebs_restores_identical(
    gateway: GatewayProc, fake_aws: FakeAWS, tmp_path: Path
) -> None:
    """A compressed full and incremental sync through a gateway on loopback into EBS (the
    gateway killed once mid-sync): every point reads back byte-identical through the
    gateway, from EBS snapshots the gateway built with the direct APIs."""
    img = ext4_image(tmp_path / "disk.img", 40, seed=4)
    target = BlockTarget(gateway.url)
    p1 = drive(target, "ebs1", [img], WriteOptions(compression=Codec.ZSTD))
    v1 = img.read_bytes()
    ext4_write(img, "day2.bin", os.urandom(6 << 20))
    killed = []

    def kill_once(n: int) -> None:
        if n == 20 and not killed:
            killed.append(n)
            gateway.kill()
            gateway.start()

    p2 = drive(target, "ebs1", [img], WriteOptions(compression=Codec.LZ4), on_block=kill_once)
    assert killed and p2.parent == p1.id
    assert read_back(target, p1) == v1
    assert read_back(target, p2) == img.read_bytes()
    assert fake_aws.calls["ebs:PutSnapshotBlock"] > 0
    points = {
        s.tags[T_POINT]
        for s in fake_aws.account.live_snapshots()
        if s.tags.get(T_VOLUME, "").startswith("ebs1--")
        and fake_aws.account.state_of(s) == "completed"
    }
    assert points == {p1.id, p2.id}
    assert target.verify("ebs1", deep=True).ok


def test_a_volume_that_outgrows_its_pending_snapshot(fake_aws: FakeAWS) -> None:
    """A pending snapshot cannot grow: it is completed as a hidden carry snapshot and a
    larger one continues from it; a shrink zeroes the tail so that growing reads zeros."""
    fake = fake_aws
    gib = 1 << 30
    vol = _vol(_ebs(fake), "big--sda", gib)
    b0, b1, b2 = os.urandom(MiB), os.urandom(MiB), os.urandom(MiB)
    vol.write(0, b0)
    vol.snapshot("p1")
    vol.write(gib - MiB, b1)
    vol.resize(gib + 3 * MiB)  # past the pending snapshot's 1 GiB
    vol.write(gib + MiB, b2)
    vol.snapshot("p2")
    assert vol.read_snapshot("p2", 0, MiB) == b0
    assert vol.read_snapshot("p2", gib - MiB, 3 * MiB) == b1 + bytes(MiB) + b2
    assert vol.read_snapshot("p2", gib + 2 * MiB, 2 * MiB) == bytes(MiB)  # short at its end
    carries = [s for s in fake.account.live_snapshots() if s.tags.get(T_POINT) == CARRY]
    assert carries == []  # deleted once p2 completed
    vol.resize(gib + MiB + 1000)
    vol.resize(gib + 3 * MiB)
    vol.snapshot("p3")
    assert vol.read_snapshot("p3", gib + MiB, 2 * MiB) == b2[:1000] + bytes(2 * MiB - 1000)
    again = _vol(_ebs(fake), "big--sda")
    assert [(s.name, s.size) for s in again.snapshots()] == [
        ("p1", gib),
        ("p2", gib + 3 * MiB),
        ("p3", gib + 3 * MiB),
    ]
    assert again.read_snapshot("p1", gib - MiB, MiB) == bytes(MiB)


def test_a_snapshot_that_fails_to_complete_stops_the_volume(fake_aws: FakeAWS) -> None:
    """A pending snapshot that ends in error (or vanishes) while it completes took the
    acknowledged blocks with it: the volume refuses further writes until a restart, whose
    open reports the writes lost; the earlier point stays readable."""
    fake = fake_aws
    vol = _vol(_ebs(fake), "f--sda", 2 * MiB)
    a = os.urandom(2 * MiB)
    vol.write(0, a)
    vol.snapshot("p1")
    vol.write(0, os.urandom(MiB))
    assert vol.pending is not None
    doomed = vol.pending.id

    def vanish(op: str, params: dict[str, str]) -> None:
        gone = fake.account.snapshots[doomed].deleted
        if op == "ec2:DescribeSnapshots" and params.get("SnapshotId.1") == doomed and not gone:
            fake.account.delete_snapshot(doomed)

    fake.hooks.append(vanish)
    with pytest.raises(VolumeError, match="failed"):
        vol.snapshot("p2")
    fake.hooks.remove(vanish)
    with pytest.raises(VolumeError, match="restart the gateway"):
        vol.write(MiB, os.urandom(MiB))
    again = _vol(_ebs(fake), "f--sda")
    assert again.lost_writes()
    assert [s.name for s in again.snapshots()] == ["p1"]
    assert again.read_snapshot("p1", 0, 2 * MiB) == a
