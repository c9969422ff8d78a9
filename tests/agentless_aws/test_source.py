"""The AWS source alone (no engine): what an incremental lists, reads and keeps."""

from __future__ import annotations

from pathlib import Path

from openbdr.capture.base import ChangeToken
from openbdr.extents import Extent
from openbdr.sync import snap_token

from ..fakes.aws import BLOCK, FakeAWS
from .conftest import discard, image, open_host, write

MIB = 1 << 20


def test_incremental_lists_changed_halves_and_trimmed_blocks(fake: FakeAWS, tmp_path: Path) -> None:
    fake.throttle_rate = 0.1
    vol = image(tmp_path / "v.img", [(0, 4 * MIB), (100 * MIB, 2 * MIB)])
    acc = fake.account
    v = acc.add_volume(vol)
    inst = acc.add_instance([v])
    host = open_host(fake, inst.id, in_flight=8)
    with host.snapshot(None) as first:
        (d,) = first.disks
        assert not d.incremental and d.fallback_reason is None
        assert d.extents() == [Extent(0, 4 * MIB), Extent(100 * MIB, 2 * MIB)]
        assert d.valid_bytes == 6 * MIB
        since = ChangeToken.from_json(snap_token(first.disks).to_json())
        first.committed()
    base = set(first.session.snapshots.values())

    write(vol, [(MIB + BLOCK + 10, 100), (50 * MIB, 4096)])  # a second half; a new block
    discard(vol, 100 * MIB, BLOCK)  # TRIM: the first half of a 1 MiB block
    with host.snapshot(since) as snap:
        (d,) = snap.disks
        assert d.incremental and d.fallback_reason is None
        ext = d.extents()
        assert ext == [Extent(MIB + BLOCK, BLOCK), Extent(50 * MIB, BLOCK)]
        assert list(d.zero_extents()) == [Extent(100 * MIB, BLOCK)]
        with open(vol, "rb") as f:
            for e in [*ext, Extent(3 * MIB, MIB)]:  # listed, and an unchanged block
                buf = bytearray(e.length)
                assert d.read_into(e.offset, buf) == e.length
                f.seek(e.offset)
                assert bytes(buf) == f.read(e.length)
        buf = bytearray(BLOCK)
        d.read_into(100 * MIB, buf)
        assert not any(buf)  # gone from the snapshot: zeros, without a GetSnapshotBlock
        snap.committed()
    live = {s.id for s in acc.live_snapshots()}
    assert live == set(snap.session.snapshots.values()) and not live & base


def test_a_run_without_commit_keeps_the_old_base(fake: FakeAWS, tmp_path: Path) -> None:
    vol = image(tmp_path / "v.img", [(0, MIB)])
    acc = fake.account
    inst = acc.add_instance([acc.add_volume(vol)])
    host = open_host(fake, inst.id)
    with host.snapshot(None) as first:
        since = ChangeToken.from_json(snap_token(first.disks).to_json())
        first.committed()
    with host.snapshot(since) as failed:
        assert failed.disks[0].incremental
    # the point of `failed` never committed: its snapshot went, the base stayed
    assert {s.id for s in acc.live_snapshots()} == set(first.session.snapshots.values())
    with host.snapshot(since) as again:
        assert again.disks[0].incremental  # still incremental against the old base
