"""What goes wrong around an agentless OpenStack sync: one clear error, or a full pass that
says why — never a wrong point, never a snapshot left behind for good."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from openbdr.capture.agentless import owned_name
from openbdr.capture.platform import PlatformError

from ..fakes.openstack.cloud import Server
from .conftest import Stack, scribble
from .helpers import (
    assert_point_is_snapshot,
    init_repo,
    openbdr_snapshots,
    run_sync,
    snap_of,
    spec,
)

pytestmark = pytest.mark.s3

MIB = 1 << 20


def sdk(stack: Stack) -> Any:
    """openstacksdk, unmodified, through the clouds.yaml (what an operator would use)."""
    import openstack.config

    import openstack

    region = openstack.config.OpenStackConfig(
        config_files=[stack.clouds_yaml], load_envvars=False).get_one(cloud="fakestack")
    return openstack.connection.Connection(config=region)


def instance(stack: Stack, rng: random.Random, n: int = 2) -> Server:
    vols = [stack.cloud.add_volume(f"v{k}", 1, stack.project) for k in range(n)]
    for v in vols:
        scribble(stack.cloud, v.id, rng, 8, 64 * MIB)
    return stack.cloud.add_server("db1", stack.project, stack.user.id, vols)


def first_point(stack: Stack, tmp: Path, rng: random.Random, n: int = 2) -> tuple[
        Server, Path, dict[str, Any]]:
    server = instance(stack, rng, n)
    repo = init_repo(tmp / "repo")
    src = spec(stack, server)
    run_sync(repo, "db1", src)
    for vid, _, _ in server.volumes:
        scribble(stack.cloud, vid, rng, 4, 64 * MIB)
    return server, repo, src


def test_base_snapshot_deleted_through_cinder(fresh: Stack, tmp_path: Path) -> None:
    rng = random.Random(1)
    _server, repo, src = first_point(fresh, tmp_path, rng)
    conn = sdk(fresh)
    for s in list(conn.block_storage.snapshots(details=True)):
        conn.block_storage.delete_snapshot(s)
    fresh.cloud.wait_idle()
    point = run_sync(repo, "db1", src)
    assert all(d.mode != "incremental" for d in point.disks)
    assert all("gone" in (d.fallback_reason or "") for d in point.disks), point.disks
    assert_point_is_snapshot(repo, fresh.cloud, point)
    assert all(len(v) == 1 for v in openbdr_snapshots(fresh.cloud).values())


def test_base_rbd_snapshot_removed_behind_cinder(fresh: Stack, tmp_path: Path) -> None:
    """`rbd snap rm` of one volume's base: that disk is read in full, the other not."""
    rng = random.Random(2)
    server, repo, src = first_point(fresh, tmp_path, rng)
    latest = run_sync(repo, "db1", src)  # a second point, so that a base exists
    victim = server.volumes[0][0]
    img = f"{fresh.cloud.pool}/volume-{victim}@snapshot-{snap_of(latest, victim)}"
    subprocess.run(["rbd", "snap", "unprotect", img], check=True, capture_output=True)
    subprocess.run(["rbd", "snap", "rm", img], check=True, capture_output=True)
    scribble(fresh.cloud, victim, rng, 3, 64 * MIB)
    point = run_sync(repo, "db1", src)
    modes = {d.name: (d.mode, d.fallback_reason) for d in point.disks}
    assert modes[victim][0] != "incremental" and "does not track" in modes[victim][1]
    assert modes[server.volumes[1][0]] == ("incremental", None)
    assert_point_is_snapshot(repo, fresh.cloud, point)


def test_volume_resized_and_volume_attached(fresh: Stack, tmp_path: Path) -> None:
    rng = random.Random(3)
    server, repo, src = first_point(fresh, tmp_path, rng)
    grown, kept = server.volumes[0][0], server.volumes[1][0]
    conn = sdk(fresh)
    conn.block_storage.extend_volume(grown, 2)  # in-use: microversion 3.42 is negotiated
    added = fresh.cloud.add_volume("new", 1, fresh.project)
    scribble(fresh.cloud, added.id, rng, 3, 32 * MIB)
    conn.compute.create_volume_attachment(server.id, volume_id=added.id)
    scribble(fresh.cloud, grown, rng, 2, 64 * MIB)
    from .conftest import write

    write(fresh.cloud, grown, (2 << 30) - 8192, b"\x5a" * 8192)  # in the new gigabyte
    point = run_sync(repo, "db1", src)
    modes = {d.name: (d.mode, d.fallback_reason or "") for d in point.disks}
    assert modes[grown][0] != "incremental" and "resized" in modes[grown][1]
    assert modes[added.id][0] == "full" and "new" in modes[added.id][1]
    assert modes[kept] == ("incremental", "")
    assert {d.name: d.size for d in point.disks}[grown] == 2 << 30
    assert_point_is_snapshot(repo, fresh.cloud, point)
    again = run_sync(repo, "db1", src)
    assert all(d.mode == "incremental" for d in again.disks)
    assert len(openbdr_snapshots(fresh.cloud)) == 3


@pytest.mark.parametrize("fault", ["500", "500-second", "stuck", "error"])
def test_cinder_failures(fresh: Stack, tmp_path: Path, fault: str) -> None:
    """Cinder 500s, a snapshot stuck in `creating` past the timeout, a snapshot ending in
    `error`: one clear error, the previous point stays the latest and its base is kept;
    once Cinder is well again the next sync is incremental and removes the leftovers."""
    rng = random.Random(4)
    _server, repo, src = first_point(fresh, tmp_path, rng)
    src["platform"]["options"]["snapshot_timeout"] = 1
    faults = fresh.cloud.faults
    if fault == "500":
        faults.http_500[("POST", "/snapshots")] = 2
    elif fault == "500-second":  # the first volume's snapshot is made, then Cinder fails
        faults.snapshot_delay = 0.5
        faults.http_500_nth[("POST", "/snapshots")] = {2}
    elif fault == "stuck":
        faults.snapshot_stuck = True
    else:
        faults.snapshot_error = True
    before = openbdr_snapshots(fresh.cloud)
    with pytest.raises(PlatformError) as err:
        run_sync(repo, "db1", src)
    msg = str(err.value)
    assert {"500": "answered 500", "500-second": "answered 500",
            "stuck": "still creating after 1 s",
            "error": "ended in status error"}[fault] in msg, msg
    if fault == "stuck":
        assert "could not be deleted yet" in msg
    assert "\n" not in msg
    fresh.cloud.unstick()
    faults.snapshot_error = False
    faults.http_500.clear()
    faults.http_500_nth.clear()
    fresh.cloud.wait_idle()
    if fault != "stuck":  # a snapshot in `error` is deleted at once, a 500 made none
        assert openbdr_snapshots(fresh.cloud) == before
    point = run_sync(repo, "db1", src)
    assert all(d.mode == "incremental" for d in point.disks), point.disks
    assert_point_is_snapshot(repo, fresh.cloud, point)
    assert all(len(v) == 1 for v in openbdr_snapshots(fresh.cloud).values())


def test_leftover_of_a_killed_sync_is_removed(fresh: Stack, tmp_path: Path) -> None:
    rng = random.Random(5)
    server, repo, src = first_point(fresh, tmp_path, rng)
    conn = sdk(fresh)
    name = owned_name("db1", 1.0)  # a run killed long ago, after its snapshot was made
    for vid, _, _ in server.volumes:
        conn.block_storage.create_snapshot(volume_id=vid, name=name, force=True)
    fresh.cloud.wait_idle()
    foreign = conn.block_storage.create_snapshot(volume_id=server.volumes[0][0],
                                                 name="nightly", force=True)
    fresh.cloud.wait_idle()
    point = run_sync(repo, "db1", src)
    assert all(d.mode == "incremental" for d in point.disks)
    snaps = openbdr_snapshots(fresh.cloud)
    assert all(len(v) == 1 and name not in v for v in snaps.values())
    assert conn.block_storage.get_snapshot(foreign.id).status == "available"  # not ours


def test_ceph_unreachable(fresh: Stack, tmp_path: Path) -> None:
    rng = random.Random(6)
    server = instance(fresh, rng)
    conf = tmp_path / "ceph.conf"
    text = Path(fresh.ceph_conf).read_text()
    lines = [("mon host = [v2:127.0.0.1:1,v1:127.0.0.1:2]" if ln.startswith("mon host")
              else ln) for ln in text.splitlines()]
    conf.write_text("\n".join(lines) + "\n")
    src = spec(fresh, server, ceph_conf=str(conf), ceph_timeout=3)
    with pytest.raises(PlatformError, match="no monitor answered within 3 s"):
        run_sync(init_repo(tmp_path / "repo"), "db1", src)
    assert openbdr_snapshots(fresh.cloud) == {}  # nothing was snapshotted


def test_wrong_keyring(fresh: Stack, tmp_path: Path) -> None:
    rng = random.Random(7)
    server = instance(fresh, rng)
    bad = tmp_path / "bad.keyring"
    bad.write_text("[client.openbdr]\n\tkey = AQBbTc9mAAAAABAAqQ8T9l8c3x2WqQ0Ms9h+Xw==\n")
    src = spec(fresh, server, ceph_keyring=str(bad), ceph_timeout=5)
    with pytest.raises(PlatformError, match="refused the key"):
        run_sync(init_repo(tmp_path / "repo"), "db1", src)
    assert openbdr_snapshots(fresh.cloud) == {}


def test_consistency_group_snapshot(fresh: Stack, tmp_path: Path) -> None:
    """Volumes in one group whose type has consistent_group_snapshot_enabled: one Cinder
    group snapshot per sync, the point is crash-consistent across disks."""
    rng = random.Random(8)
    cloud = fresh.cloud
    gtype = cloud.add_group_type("cg", consistent=True)
    group = cloud.add_group("web-cg", gtype, fresh.project)
    vols = [cloud.add_volume(f"g{k}", 1, fresh.project, group_id=group.id) for k in range(2)]
    for v in vols:
        scribble(cloud, v.id, rng, 5, 64 * MIB)
    server = cloud.add_server("cg1", fresh.project, fresh.user.id, vols)
    repo = init_repo(tmp_path / "repo")
    src = spec(fresh, server)
    p1 = run_sync(repo, "cg1", src)
    assert p1.consistency == "crash"
    scribble(cloud, vols[1].id, rng, 5, 64 * MIB)
    p2 = run_sync(repo, "cg1", src)
    assert p2.consistency == "crash"
    assert all(d.mode == "incremental" for d in p2.disks)
    assert_point_is_snapshot(repo, cloud, p2)
    cloud.wait_idle()
    assert len(cloud.group_snapshots) == 1
    assert all(len(v) == 1 for v in openbdr_snapshots(cloud).values())


def test_discover_pages_and_reports_volumes(fresh: Stack) -> None:
    from openbdr.capture.platform import open_platform

    rng = random.Random(9)
    servers = [instance(fresh, rng, 1) for _ in range(3)]
    fresh.server.page_size = 2  # type: ignore[attr-defined]
    try:
        p = fresh.platform()
        plat = open_platform("openstack", p["endpoint"], {}, p["options"])
        assert "project" in plat.test()
        vms = plat.discover()
        assert sorted(v.id for v in vms) == sorted(s.id for s in servers)
        for vm in vms:
            assert len(vm.disks) == 1 and vm.disks[0].size == 1 << 30
            assert vm.power_state == "running"
        assert ("GET", "/compute/v2.1/servers/detail") in fresh.cloud.requests
        with pytest.raises(PlatformError, match="no VM"):
            plat.vm("nope")
    finally:
        del fresh.server.page_size  # type: ignore[attr-defined]


def test_wrong_password_is_one_line(fresh: Stack) -> None:
    from openbdr.capture.platform import open_platform

    plat = open_platform("openstack", fresh.server.auth_url,
                         {"username": "demo", "password": "nope", "project_name": "demo"},
                         {"ceph_conf": fresh.ceph_conf})
    with pytest.raises(PlatformError, match="refused the credentials"):
        plat.discover()


def test_hosts_whose_names_share_a_prefix_keep_their_bases(fresh: Stack,
                                                            tmp_path: Path) -> None:
    """`openbdr-db1-…` names also start like host `db1-x`'s: neither deletes the other's."""
    rng = random.Random(10)
    a, b = instance(fresh, rng, 1), instance(fresh, rng, 1)
    repo = init_repo(tmp_path / "repo")
    for _ in range(2):
        for host, server in (("db1", a), ("db1-x", b)):
            scribble(fresh.cloud, server.volumes[0][0], rng, 2, 32 * MIB)
            run_sync(repo, host, spec(fresh, server))
    for host, server in (("db1", a), ("db1-x", b)):
        point = run_sync(repo, host, spec(fresh, server))
        assert [d.mode for d in point.disks] == ["incremental"], (host, point.disks)
    assert sorted(len(v) for v in openbdr_snapshots(fresh.cloud).values()) == [1, 1]


def test_auth_url_with_an_application_credential(fresh: Stack) -> None:
    from openbdr.capture.platform import open_platform

    rng = random.Random(11)
    server = instance(fresh, rng, 1)
    cred = fresh.cloud.add_app_credential(fresh.user)
    plat = open_platform("openstack", fresh.server.auth_url,
                         {"application_credential_id": cred.id,
                          "application_credential_secret": cred.secret},
                         {"ceph_conf": fresh.ceph_conf})
    assert [vm.id for vm in plat.discover()] == [server.id]
    bad = open_platform("openstack", fresh.server.auth_url,
                        {"application_credential_id": cred.id,
                         "application_credential_secret": "wrong"}, {})
    with pytest.raises(PlatformError, match="refused the credentials"):
        bad.discover()


class _FlakyImage:
    """An RBD image stand-in whose second object cannot be read (an OSD gone mid-read)."""

    def features(self) -> int:
        return 0

    def flags(self) -> int:
        return 0

    def stat(self) -> dict[str, int]:
        return {"obj_size": 4 * MIB}

    def read(self, offset: int, length: int) -> bytes:
        import rbd

        if offset >= 4 * MIB:
            raise rbd.IOError("injected: OSD down")
        return bytes((offset + k) // MIB + 1 for k in range(0, length, MIB) for _ in range(MIB))

    def close(self) -> None:
        pass


def test_blocks_read_whole_come_from_the_request_and_a_failed_read_is_an_error() -> None:
    from openbdr.capture.agentless import DiskPlan
    from openbdr.capture.openstack.ceph import RbdDisk
    from openbdr.extents import Extent

    disk = RbdDisk(DiskPlan("vol", 8 * MIB, True), "base", _FlakyImage(), "vol", "snap",
                   "snapshot-base", "rbd/volume-vol@snapshot-snap")
    try:
        disk.plan_reads([Extent(0, 8 * MIB)])
        held = disk.view(MIB, MIB)  # the block as RBD returned it, no copy
        assert held is not None and bytes(held) == bytes([2]) * MIB
        buf = bytearray(MIB)
        assert disk.read_into(3 * MIB, buf) == MIB and bytes(buf) == bytes([4]) * MIB
        assert disk.view(5 * MIB, MIB) is None  # its read failed: read_into says how
        with pytest.raises(OSError, match="RBD read of rbd/volume-vol@snapshot-snap failed"):
            disk.read_into(5 * MIB, buf)
        assert disk.view(7 * MIB, 2 * MIB) is None  # past the end
    finally:
        disk.close()
