"""Syncing an OpenStack instance into a repository and checking points against RBD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openbdr.blocks import BLOCK_SIZE
from openbdr.capture.base import ChangeToken, Host, Snapshot
from openbdr.capture.registry import open_source
from openbdr.chunk import ZERO_ID
from openbdr.store.manifest import RestorePoint
from openbdr.store.repository import Repository
from openbdr.sync import SyncOptions, sync

from ..fakes.openstack import Cloud
from ..fakes.openstack.cloud import Server
from .conftest import Stack, snapshot_blocks


class _Committing(Snapshot):
    """Until the engine calls `Snapshot.committed()` itself (the integrator's sync
    refactor), call it once the point that names this snapshot is committed."""

    def __init__(self, inner: Snapshot, repo: Repository, host: str) -> None:
        self.inner, self.repo, self.host = inner, repo, host
        self.disks, self.consistency = inner.disks, inner.consistency
        self._done = False

    def committed(self) -> None:
        self._done = True
        self.inner.committed()

    def release(self) -> None:
        if not self._done:
            latest = self.repo.latest(self.host)
            mine = {d.name: d.token.to_json() for d in self.disks}
            if latest is not None and (latest.token or {}).get("value") == mine:
                self.committed()
        self.inner.release()


class _Host(Host):
    def __init__(self, inner: Host, repo: Repository) -> None:
        self.inner, self.repo, self.name = inner, repo, inner.name

    def snapshot(self, since: ChangeToken | None) -> Snapshot:
        return _Committing(self.inner.snapshot(since), self.repo, self.name)

    def describe(self) -> str:
        return self.inner.describe()


def spec(stack: Stack, server: Server, **options: Any) -> dict[str, Any]:
    return {"type": "openstack", "platform": stack.platform(**options), "vm": server.id}


def run_sync(repo_path: Path, host: str, source: dict[str, Any],
             full: bool = False) -> RestorePoint:
    repo = Repository.open(str(repo_path))
    return sync(repo, _Host(open_source(host, source), repo), SyncOptions(full=full, threads=4))


def init_repo(path: Path) -> Path:
    Repository.init(str(path))
    return path


def snap_of(point: RestorePoint, disk: str) -> str:
    """The Cinder snapshot id a point's disk was read from."""
    return str(point.token["value"][disk]["value"]["snapshot"])


def assert_point_is_snapshot(repo_path: Path, cloud: Cloud, point: RestorePoint) -> None:
    """Every block of every disk of `point` equals its RBD snapshot's, zeros included."""
    repo = Repository.open(str(repo_path))
    codec = repo.codec()
    for rec in point.disks:
        want = snapshot_blocks(cloud, rec.name, f"snapshot-{snap_of(point, rec.name)}")
        index = repo.get_index(rec.index_key)
        assert index.size == rec.size
        for i in range((rec.size + BLOCK_SIZE - 1) // BLOCK_SIZE):
            cid = index[i]
            if i not in want:
                if cid != ZERO_ID:
                    data = codec.decode(cid, repo.get_chunk(cid), where=f"{rec.name}:{i}")
                    assert data.count(0) == len(data), f"{rec.name} block {i} is not zero"
                continue
            assert cid != ZERO_ID, f"{rec.name} block {i}: data missing from the point"
            data = codec.decode(cid, repo.get_chunk(cid), where=f"{rec.name}:{i}")
            assert data == want[i], f"{rec.name} block {i} differs from the RBD snapshot"


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
