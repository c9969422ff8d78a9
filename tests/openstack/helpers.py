"""Syncing an OpenStack instance into a target and checking points against RBD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openbdr.capture.registry import open_source
from openbdr.store.manifest import RestorePoint
from openbdr.store.target import init_target, open_target
from openbdr.sync import SyncOptions, sync

from ..fakes.openstack import Cloud
from ..fakes.openstack.cloud import Server
from .conftest import Stack, snapshot_blocks


def spec(stack: Stack, server: Server, **options: Any) -> dict[str, Any]:
    return {"type": "openstack", "platform": stack.platform(**options), "vm": server.id}


def run_sync(repo_path: Path, host: str, source: dict[str, Any],
             full: bool = False) -> RestorePoint:
    target = open_target(str(repo_path))
    try:
        return sync(target, open_source(host, source), SyncOptions(full=full, threads=4))
    finally:
        target.close()


def init_repo(path: Path) -> Path:
    init_target(str(path)).close()
    return path


def snap_of(point: RestorePoint, disk: str) -> str:
    """The Cinder snapshot id a point's disk was read from."""
    return str(point.token["value"][disk]["value"]["snapshot"])


def assert_point_is_snapshot(repo_path: Path, cloud: Cloud, point: RestorePoint) -> None:
    """Every block of every disk of `point` equals its RBD snapshot's, zeros included."""
    target = open_target(str(repo_path))
    try:
        for rec in point.disks:
            snap = snap_of(point, rec.name)
            if not rec.name.endswith("_disk"):  # a Cinder snapshot's RBD snapshot
                snap = f"snapshot-{snap}"
            want = snapshot_blocks(cloud, rec.name, snap)
            reader = target.reader(point, rec)
            assert reader.size == rec.size
            have = set(reader.allocated())
            for i in have - set(want):
                data = reader.read_block(i)
                assert data.count(0) == len(data), f"{rec.name} block {i} is not zero"
            missing = set(want) - have
            assert not missing, f"{rec.name}: blocks {sorted(missing)[:5]} missing"
            for i, data in reader.read_blocks(sorted(want)):
                assert data == want[i], f"{rec.name} block {i} differs from the RBD snapshot"
            reader.close()
    finally:
        target.close()


def openbdr_snapshots(cloud: Cloud) -> dict[str, list[str]]:
    """Volume id -> names of OpenBDR's Cinder snapshots on it (deleting ones excluded),
    after checking each has exactly its RBD snapshot."""
    import rbd

    cloud.wait_idle(20)
    out: dict[str, list[str]] = {}
    with cloud.lock:
        for s in cloud.snapshots.values():
            if s.name.startswith("openbdr-") and s.status != "deleting":
                out.setdefault(s.volume_id, []).append(s.name)
        for vid in cloud.volumes:
            with rbd.Image(cloud.ioctx, cloud.image_name(vid), read_only=True) as img:
                rbd_snaps = sorted(x["name"] for x in img.list_snaps())
            cinder = sorted(f"snapshot-{s.id}" for s in cloud.snapshots.values()
                            if s.volume_id == vid)
            assert rbd_snaps == cinder, f"volume {vid}: RBD {rbd_snaps} vs Cinder {cinder}"
    return out
