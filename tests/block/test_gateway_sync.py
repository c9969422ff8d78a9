"""Full and incremental syncs of a real ext4 image through a gateway, into raw files + undo
journal, into Ceph RBD and into AWS EBS snapshots (the fake): every point reads back byte-identical, verify passes,
retention deletes snapshots and gc the rest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.chunk import Codec
from openbdr.store.block.target import BlockTarget
from openbdr.store.target import WriteOptions

from .conftest import GatewayProc
from .driver import drive, read_back
from .images import ext4_image, ext4_write, scribble


@pytest.mark.parametrize("backend_url", ["file", "rbd", "ebs"], indirect=True)
def test_full_and_incremental_points_read_back_identical(
    gateway: GatewayProc, tmp_path: Path
) -> None:
    img = ext4_image(tmp_path / "disk.img", 48)
    target = BlockTarget(gateway.url)
    states = []
    p1 = drive(target, "web1", [img], WriteOptions(compression=Codec.ZSTD))
    states.append((p1, img.read_bytes()))
    d = p1.disks[0]
    # compressed on the wire, decompressed on the volume: text and repetitive data shrink
    assert 0 < d.stored_bytes < d.written_bytes
    ext4_write(img, "new.bin", os.urandom(3 << 20))
    ext4_write(img, "text.txt", b"rewritten\n" * 50_000)
    scribble(img, 40 * BLOCK_SIZE, bytes(2 * BLOCK_SIZE))  # blocks that became zero
    p2 = drive(target, "web1", [img], WriteOptions(compression=Codec.LZ4))
    states.append((p2, img.read_bytes()))
    assert p2.parent == p1.id
    # only what changed travelled
    assert 0 < p2.disks[0].written_bytes < p1.disks[0].written_bytes
    ext4_write(img, "more.bin", os.urandom(BLOCK_SIZE))
    p3 = drive(target, "web1", [img])
    states.append((p3, img.read_bytes()))
    for p, want in states:
        assert read_back(target, p) == want, p.id
    rep = target.verify("web1")
    assert rep.ok and rep.points == 3 and rep.chunks_checked > 0
    # retention forgets the middle point: its snapshot goes, the others stay whole
    target.forget([p2])
    assert [p.id for p in target.points("web1")] == [p1.id, p3.id]
    for p, want in (states[0], states[2]):
        assert read_back(target, p) == want
    target.gc()
    assert target.verify("web1", deep=True).ok
    names = [v["snapshots"] for v in target.volumes()]
    assert names == [[p1.id, p3.id]]


def test_two_disks_and_two_hosts_at_once(gateway: GatewayProc, tmp_path: Path) -> None:
    a = ext4_image(tmp_path / "a.img", 32, seed=2)
    b = ext4_image(tmp_path / "b.img", 24, seed=3)
    c = ext4_image(tmp_path / "c.img", 16, seed=4)
    target = BlockTarget(gateway.url)
    pa = drive(target, "db1", [a, b])
    pc = drive(target, "app1", [c])
    assert read_back(target, pa, 0) == a.read_bytes()
    assert read_back(target, pa, 1) == b.read_bytes()
    assert read_back(target, pc, 0) == c.read_bytes()
    assert target.hosts() == ["app1", "db1"]
    # a disk that grew keeps its history; the new point reads the grown disk
    shutil.copyfile(c, tmp_path / "c.old")
    with open(c, "ab") as f:
        f.write(os.urandom(BLOCK_SIZE + 4096))
    pc2 = drive(target, "app1", [c])
    assert read_back(target, pc2) == c.read_bytes()
    assert read_back(target, pc) == (tmp_path / "c.old").read_bytes()


class _Abort(Exception):
    pass


def test_an_abandoned_sync_never_leaks_into_the_next_point(
    gateway: GatewayProc, tmp_path: Path
) -> None:
    """A sync dies after writing half its changed blocks in place; the source then goes
    back to what the last point holds. The next sync sends nothing (every block is
    "known"), and the gateway puts the dirtied blocks back from the snapshot before it
    takes the new one; likewise across a gateway restart."""
    img = ext4_image(tmp_path / "disk.img", 32, seed=9)
    target = BlockTarget(gateway.url)
    p1 = drive(target, "h9", [img])
    first = img.read_bytes()
    for restart in (False, True):
        ext4_write(img, "bulk.bin", os.urandom(12 << 20))

        def stop(n: int) -> None:
            if n == 10:
                raise _Abort

        with pytest.raises(_Abort):
            drive(target, "h9", [img], checkpoint_every=4, on_block=stop)
        if restart:
            gateway.kill()
            gateway.start()
        img.write_bytes(first)
        st = os.stat(img)
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # another frozen view
        p = drive(target, "h9", [img])
        assert p.disks[0].written_bytes == 0  # nothing travelled: all known
        assert read_back(target, p) == first
    assert read_back(target, p1) == first


@pytest.mark.parametrize("backend_url", ["file", "rbd", "ebs"], indirect=True)
def test_a_disk_that_shrinks_and_grows_again(gateway: GatewayProc, tmp_path: Path) -> None:
    """Odd sizes, a shrink and a regrowth: each point reads back its own size and bytes, and
    the regrown tail is zeros where the source is (not what the volume held before)."""
    img = tmp_path / "raw.img"
    target = BlockTarget(gateway.url)
    states = []
    for size in (8 * BLOCK_SIZE + 512, 5 * BLOCK_SIZE + 4096, 9 * BLOCK_SIZE):
        data = bytearray(os.urandom(size))
        data[6 * BLOCK_SIZE :] = bytes(len(data) - 6 * BLOCK_SIZE) if size > 6 * BLOCK_SIZE else b""
        img.write_bytes(bytes(data[:size]))
        p = drive(target, "resize1", [img])
        assert p.disks[0].size == size
        states.append((p, img.read_bytes()))
    for p, want in states:
        assert read_back(target, p) == want, p.id
    assert target.verify("resize1", deep=True).ok
