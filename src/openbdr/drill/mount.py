"""`openbdr mount`: a point's file system, read-only, straight from the repository.

The disk is a FUSE file (throwaway overlay, so a dirty journal can replay without
touching the point), the volume a loop device over it, mounted `ro`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import OpenBDRError
from ..store.manifest import RestorePoint
from ..store.target import Target
from .checks import mount_volume
from .image import PointImage, find_disk
from .resources import Resources
from .volumes import find_volume, volumes


class MountError(OpenBDRError):
    """The point cannot be mounted there."""


@contextlib.contextmanager
def mount_point(
    repo: Target,
    point: RestorePoint,
    mountpoint: Path,
    *,
    disk: str | None = None,
    volume: str | None = None,
) -> Iterator[str]:
    """Yields a description of what is mounted on `mountpoint`; unmounts on exit."""
    mp = Path(mountpoint)
    if not mp.is_dir():
        raise MountError(f"mount point {mp} is not a directory", "create it first")
    if os.path.ismount(mp) or any(mp.iterdir()):
        raise MountError(f"mount point {mp} is not empty or already mounted")
    d = find_disk(point, disk if disk is not None else (None if len(point.disks) == 1 else "0"))
    vols = volumes(PointImage(repo.reader(point, d), cache_blocks=8))
    v = find_volume(vols, volume)
    if v is None or not v.fstype:
        have = ", ".join(f"{x.number} ({x.fstype or 'unknown'})" for x in vols) or "none"
        raise MountError(
            f"disk {d.name} of point {point.id} has no mountable volume {volume or ''}".strip(),
            f"volumes: {have}",
        )
    with Resources(f"mount-{point.id}-{os.getpid()}") as res:
        work = res.tempdir("openbdr-mount-")
        fuse = res.fuse_point(
            repo.url, point.host, point.id, work / "disks", overlay=True, tmpdir=work
        )
        mount_volume(res, fuse / d.name, v, mp)
        yield f"{d.name} volume {v.number} ({v.fstype})"
