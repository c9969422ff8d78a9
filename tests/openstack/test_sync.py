"""Agentless syncs of an OpenStack instance whose volumes are real RBD images."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from openbdr.capture.openstack.ceph import DENSE

from ..fakes.openstack.cloud import GIB, Cloud, Server
from ..helpers import make_ext4
from .conftest import Stack, discard, scribble, write
from .helpers import (
    assert_point_is_snapshot,
    init_repo,
    openbdr_snapshots,
    run_sync,
    snap_of,
    spec,
)

pytestmark = pytest.mark.s3  # needs the Ceph fixture

MIB = 1 << 20


def make_instance(stack: Stack, tmp: Path, rng: random.Random,
                  group: str | None = None) -> Server:
    """A server booted from a volume holding ext4 (64 MiB), with a raw 1 GiB data volume."""
    cloud = stack.cloud
    boot = cloud.add_volume("boot", 1, stack.project, bootable=True, group_id=group)
    data = cloud.add_volume("data", 1, stack.project, group_id=group)
    content = tmp / "content"
    content.mkdir(exist_ok=True)
    for k in range(20):
        (content / f"f{k}").write_bytes(rng.randbytes(rng.randrange(1, 400_000)))
    img = make_ext4(tmp / "boot.ext4", 64, content)
    raw = img.read_bytes()
    for off in range(0, len(raw), 4 * MIB):
        write(cloud, boot.id, off, raw[off:off + 4 * MIB])
    scribble(cloud, data.id, rng, 30, 200 * MIB)
    return cloud.add_server("web1", stack.project, stack.user.id, [boot, data])


@pytest.mark.parametrize("exact", [False, True], ids=["objects", "exact"])
def test_full_and_three_incrementals(fresh: Stack, tmp_path: Path, exact: bool) -> None:
    rng = random.Random(15)
    cloud = fresh.cloud
    server = make_instance(fresh, tmp_path, rng)
    boot, data = (v for v, _, _ in server.volumes)
    repo = init_repo(tmp_path / "repo")
    src = spec(fresh, server, rbd_exact="true") if exact else spec(fresh, server)

    full = run_sync(repo, "web1", src)
    assert {d.name for d in full.disks} == {boot, data}
    assert all(d.mode == "full" for d in full.disks)
    assert full.consistency == "crash-per-disk"
    assert_point_is_snapshot(repo, cloud, full)
    snaps = openbdr_snapshots(cloud)
    assert {v: len(n) for v, n in snaps.items()} == {boot: 1, data: 1}
    # the ext4 volume: only what the file system uses (well under its 64 MiB) is read
    boot_rec = next(d for d in full.disks if d.name == boot)
    assert boot_rec.read_bytes < 40 * MIB
    assert boot_rec.layout is not None

    prev = full
    for round_ in range(3):
        scribble(cloud, boot, rng, 5, 64 * MIB)
        scribble(cloud, data, rng, 10, 300 * MIB)
        if round_ == 1:
            discard(cloud, data, 0, 64 * MIB)  # a guest's fstrim: zeros, not read
        if round_ == 2:
            write(cloud, data, GIB - 4096, b"\xee" * 4096)  # the very last bytes
        # the previous snapshot is deleted by the sync: its exact diff to the image now
        expect = {v: exact_reads(rbd_diff(cloud, v, snap_of(prev, v), None)[0])
                  for v in (boot, data)}
        point = run_sync(repo, "web1", src)
        assert all(d.mode == "incremental" for d in point.disks), point.disks
        assert all(d.fallback_reason is None for d in point.disks)
        assert_point_is_snapshot(repo, cloud, point)
        snaps = openbdr_snapshots(cloud)
        assert {v: len(n) for v, n in snaps.items()} == {boot: 1, data: 1}
        assert sum(d.read_bytes for d in point.disks) < sum(d.read_bytes for d in full.disks)
        # fast-diff names changed objects; with rbd_exact only the bytes written in them
        # are read (the rest of a touched block is the previous point's), else the objects
        for d in point.disks:
            least, most = expect[d.name]
            if exact:
                assert least <= d.read_bytes <= most, (round_, d.name, least, d.read_bytes)
            else:
                assert d.read_bytes > most, (round_, d.name, most, d.read_bytes)
        prev = point


def test_without_fast_diff(fresh: Stack, tmp_path: Path) -> None:
    """Images without object-map/fast-diff (layering only): the diff comes from the
    objects' snapshot sets, in byte extents; only those are read (blocks mostly changed
    whole), discarded ranges are zeros not read, and the point is as exact."""
    import rbd

    rng = random.Random(16)
    cloud = fresh.cloud
    vol = cloud.add_volume("plain", 1, fresh.project, features=rbd.RBD_FEATURE_LAYERING)
    scribble(cloud, vol.id, rng, 10, 128 * MIB)
    write(cloud, vol.id, 200 * MIB, rng.randbytes(8 * MIB))
    server = cloud.add_server("plain1", fresh.project, fresh.user.id, [vol])
    repo = init_repo(tmp_path / "repo")
    src = spec(fresh, server)
    first = run_sync(repo, "plain1", src)
    assert first.consistency == "crash"  # one volume: one instant
    scribble(cloud, vol.id, rng, 6, 128 * MIB)
    discard(cloud, vol.id, 201 * MIB, 3 * MIB + 4096)
    point = run_sync(repo, "plain1", src)
    assert [d.mode for d in point.disks] == ["incremental"]
    written, gone = rbd_diff(cloud, vol.id, snap_of(first, vol.id), snap_of(point, vol.id))
    assert gone and written
    least, most = exact_reads(written)
    assert least <= point.disks[0].read_bytes <= most
    assert_point_is_snapshot(repo, cloud, point)


def exact_reads(written: list[tuple[int, int]]) -> tuple[int, int]:
    """Bounds of what an incremental reads of these written extents: their bytes, plus
    the rest of each block they cover at least `ceph.DENSE` of (read whole)."""
    covered: dict[int, int] = {}
    for off, n in written:
        while n > 0:
            step = min(n, MIB - off % MIB)
            covered[off // MIB] = covered.get(off // MIB, 0) + step
            off, n = off + step, n - step
    least = sum(covered.values())
    return least, least + sum(MIB - c for c in covered.values() if DENSE * MIB <= c < MIB)


def rbd_diff(cloud: Cloud, volume: str, base: str, snap: str | None) -> tuple[
        list[tuple[int, int]], list[tuple[int, int]]]:
    """The exact RBD diff between two Cinder snapshots (None: the image as it is now):
    (existing, not existing) extents."""
    import rbd

    out: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
    with rbd.Image(cloud.ioctx, cloud.image_name(volume),
                   snapshot=f"snapshot-{snap}" if snap else None, read_only=True) as img:
        img.diff_iterate(0, img.size(), f"snapshot-{base}",
                         lambda o, n, e: out[0 if e else 1].append((o, n)) or 0)
    return out


def test_rbd_diff_off_is_a_hash_compare(fresh: Stack, tmp_path: Path) -> None:
    rng = random.Random(17)
    cloud = fresh.cloud
    vol = cloud.add_volume("hc", 1, fresh.project)
    scribble(cloud, vol.id, rng, 6, 64 * MIB)
    server = cloud.add_server("hc1", fresh.project, fresh.user.id, [vol])
    repo = init_repo(tmp_path / "repo")
    src = spec(fresh, server, rbd_diff="false")
    run_sync(repo, "hc1", src)
    scribble(cloud, vol.id, rng, 2, 64 * MIB)
    point = run_sync(repo, "hc1", src)
    assert [d.mode for d in point.disks] == ["hash-compare"]
    assert "rbd_diff=false" in (point.disks[0].fallback_reason or "")
    assert_point_is_snapshot(repo, cloud, point)
    assert all(len(v) == 1 for v in openbdr_snapshots(cloud).values())


def test_instance_booted_from_an_image(fresh: Stack, tmp_path: Path) -> None:
    """The ephemeral root disk (`<uuid>_disk` in Nova's pool) is snapshotted on RBD
    directly, with a key that may write there; the Cinder volume through Cinder."""
    import subprocess

    import rbd

    rng = random.Random(18)
    cloud = fresh.cloud
    data = cloud.add_volume("data", 1, fresh.project)
    server = cloud.add_server("img1", fresh.project, fresh.user.id, [data], root_gib=1)
    root = f"{server.id}_disk"
    scribble(cloud, data.id, rng, 5, 64 * MIB)
    with rbd.Image(cloud.ioctx, root) as img:
        for _ in range(5):
            img.write(rng.randbytes(200_000), rng.randrange(0, 60 * MIB))
    key = tmp_path / "nova.keyring"
    key.write_text(subprocess.run(
        ["ceph", "auth", "get-or-create", "client.openbdr-nova", "mon", "profile rbd",
         "osd", "profile rbd pool=rbd"], check=True, capture_output=True, text=True).stdout)
    repo = init_repo(tmp_path / "repo")
    src = spec(fresh, server, ceph_user="openbdr-nova", ceph_keyring=str(key), nova_pool="rbd")
    first = run_sync(repo, "img1", src)
    assert [d.name for d in first.disks] == [root, data.id]
    assert first.consistency == "crash-per-disk"
    assert_point_is_snapshot(repo, cloud, first)
    for _ in range(2):
        with rbd.Image(cloud.ioctx, root) as img:
            img.write(rng.randbytes(100_000), rng.randrange(0, 60 * MIB))
        point = run_sync(repo, "img1", src)
        assert [d.mode for d in point.disks] == ["incremental", "incremental"]
        assert_point_is_snapshot(repo, cloud, point)
        with rbd.Image(cloud.ioctx, root, read_only=True) as img:
            assert [s["name"] for s in img.list_snaps()] == [snap_of(point, root)]

    # the read-only key of the volumes cannot snapshot an ephemeral disk: one clear line
    from openbdr.capture.platform import PlatformError

    with pytest.raises(PlatformError, match="may not snapshot"):
        run_sync(repo, "img1", spec(fresh, server, nova_pool="rbd"))
    with rbd.Image(cloud.ioctx, root, read_only=True) as img:
        assert len(list(img.list_snaps())) == 1
