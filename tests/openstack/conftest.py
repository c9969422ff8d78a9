"""A fake OpenStack (Keystone, Nova, Cinder) over the session's real Ceph cluster."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..fakes.openstack import Cloud, FakeServer, Faults, write_clouds_yaml
from ..fakes.openstack.cloud import GIB, User

CLOUD = "fakestack"
PASSWORD = "s3cret-pass"


@dataclass
class Stack:
    cloud: Cloud
    server: FakeServer
    project: str
    user: User
    clouds_yaml: str
    keyring: str
    ceph_conf: str

    def platform(self, **options: Any) -> dict[str, Any]:
        """The `platform` part of an openstack source spec (clouds.yaml cloud name)."""
        opts = {"clouds_yaml": self.clouds_yaml, "ceph_conf": self.ceph_conf,
                "ceph_user": "openbdr", "ceph_keyring": self.keyring, "ceph_pool": "rbd",
                "snapshot_timeout": 20}
        opts.update(options)
        return {"endpoint": CLOUD, "credentials": {}, "options": opts}


def _keyring(path: Path) -> str:
    """A key for client.openbdr with the least capabilities docs/openstack.md names."""
    out = subprocess.run(
        ["ceph", "auth", "get-or-create", "client.openbdr", "mon", "profile rbd",
         "osd", "profile rbd-read-only pool=rbd"],
        check=True, capture_output=True, text=True,
    ).stdout
    path.write_text(out)
    return str(path)


@pytest.fixture(scope="session")
def stack(ceph: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("openstack")
    cloud = Cloud(pool=ceph.get("RBD_POOL", "rbd"))
    project = cloud.add_project("demo")
    user = cloud.add_user("demo", PASSWORD, project, ["member", "reader"])
    server = FakeServer(cloud).start()
    yaml = write_clouds_yaml(str(d / "clouds.yaml"), CLOUD, server, "demo", PASSWORD, "demo")
    st = Stack(cloud, server, project, user, yaml, _keyring(d / "openbdr.keyring"),
               os.environ["CEPH_CONF"])
    try:
        yield st
    finally:
        server.stop()
        cloud.close()


@pytest.fixture
def fresh(stack: Stack) -> Iterator[Stack]:
    """The stack with default faults and no servers, volumes or snapshots left over."""
    stack.cloud.faults = Faults()
    yield stack
    cloud = stack.cloud
    cloud.faults = Faults()
    with contextlib.suppress(TimeoutError):
        cloud.wait_idle(20)
    import rbd

    with cloud.lock:
        for v in list(cloud.volumes.values()):
            try:
                with rbd.Image(cloud.ioctx, cloud.image_name(v.id)) as img:
                    for s in list(img.list_snaps()):
                        if img.is_protected_snap(s["name"]):
                            img.unprotect_snap(s["name"])
                        img.remove_snap(s["name"])
                rbd.RBD().remove(cloud.ioctx, cloud.image_name(v.id))
            except rbd.ImageNotFound:
                pass
        for srv in cloud.servers.values():
            if not srv.image:
                continue
            try:
                with rbd.Image(cloud.ioctx, f"{srv.id}_disk") as img:
                    for s in list(img.list_snaps()):
                        img.remove_snap(s["name"])
                rbd.RBD().remove(cloud.ioctx, f"{srv.id}_disk")
            except rbd.ImageNotFound:
                pass
        cloud.volumes.clear()
        cloud.snapshots.clear()
        cloud.servers.clear()
        cloud.groups.clear()
        cloud.group_snapshots.clear()
        cloud.stuck.clear()


def write(cloud: Cloud, volume_id: str, offset: int, data: bytes) -> None:
    """Write into a volume's RBD image, as the running guest would."""
    import rbd

    with rbd.Image(cloud.ioctx, cloud.image_name(volume_id)) as img:
        img.write(data, offset)


def discard(cloud: Cloud, volume_id: str, offset: int, length: int) -> None:
    import rbd

    with rbd.Image(cloud.ioctx, cloud.image_name(volume_id)) as img:
        img.discard(offset, length)


def scribble(cloud: Cloud, volume_id: str, rng: random.Random, n: int, span: int) -> None:
    """`n` random writes of 4 KiB–300 KiB within the first `span` bytes."""
    for _ in range(n):
        length = rng.randrange(4096, 300 << 10)
        off = rng.randrange(0, span - length) & ~511
        write(cloud, volume_id, off, rng.randbytes(length))


def snapshot_blocks(cloud: Cloud, volume_id: str, snap: str) -> dict[int, bytes]:
    """Block index -> bytes of every 1 MiB block holding data in an RBD snapshot (of a
    volume, or of an ephemeral disk `<uuid>_disk`)."""
    import rbd

    from openbdr.blocks import BLOCK_SIZE

    out: dict[int, bytes] = {}
    name = volume_id if volume_id.endswith("_disk") else cloud.image_name(volume_id)
    with rbd.Image(cloud.ioctx, name, snapshot=snap, read_only=True) as img:
        size = img.size()
        touched: set[int] = set()

        def cb(off: int, length: int, exists: bool) -> int:
            if exists:
                touched.update(range(off // BLOCK_SIZE, (off + length - 1) // BLOCK_SIZE + 1))
            return 0

        img.diff_iterate(0, size, None, cb)
        for i in sorted(touched):
            data = img.read(i * BLOCK_SIZE, min(BLOCK_SIZE, size - i * BLOCK_SIZE))
            if data.count(0) != len(data):
                out[i] = data
    return out


__all__ = ["GIB", "Stack", "discard", "scribble", "snapshot_blocks", "write"]
