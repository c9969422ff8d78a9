"""Ceph RBD volumes: an RBD image per disk, an RBD snapshot per restore point.

`rbd://POOL` (optionally `?conf=PATH&prefix=P`); the cluster comes from `conf`, else
`$CEPH_CONF`, and the keyring from the conf or `$CEPH_KEYRING`. Images are named
`<prefix><volume>` (prefix `obdr.`). RBD snapshots are crash-consistent by construction:
librbd freezes the image at `create_snap`, and writes acknowledged before it (and flushed)
are in it. QEMU reads a snapshot natively (`direct_source`), so a drill boots without a copy.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .volumes import (
    SnapshotInfo,
    Volume,
    VolumeError,
    VolumeFull,
    VolumeStore,
    check_name,
    register_backend,
)


def _rbd() -> Any:
    try:
        import rados
        import rbd
    except ImportError:
        raise VolumeError(
            "the RBD backend needs python3-rados and python3-rbd",
            "apt-get install python3-rbd and use a venv with --system-site-packages",
        ) from None
    return rados, rbd


def _err(exc: Exception, what: str) -> Exception:
    import errno

    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space" in str(exc):
        return VolumeFull(f"{what}: the Ceph pool is full", "add capacity or delete old points")
    return VolumeError(f"{what}: {exc}")


class RbdVolume(Volume):
    def __init__(self, store: RbdStore, name: str) -> None:
        self.store = store
        self.name = name
        self.image_name = store.prefix + name
        _, rbd = _rbd()
        self.image = rbd.Image(store.ioctx, self.image_name)
        self._snap_images: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return int(self.image.size())

    def resize(self, size: int) -> None:
        if size != self.size:
            self.image.resize(size, allow_shrink=True)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise VolumeError(f"volume {self.name}: write past its end ({offset}+{len(data)})")
        try:
            self.image.write(bytes(data), offset)
        except Exception as exc:
            raise _err(exc, f"volume {self.name}") from None

    def write_zeroes(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise VolumeError(f"volume {self.name}: zeroing past its end")
        try:
            self.image.write_zeroes(offset, length)
        except AttributeError:
            self.image.discard(offset, length)
        except Exception as exc:
            raise _err(exc, f"volume {self.name}") from None

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        return bytes(self.image.read(offset, length)) if length else b""

    def flush(self) -> None:
        self.image.flush()

    def snapshot(self, name: str) -> SnapshotInfo:
        check_name(name, "snapshot")
        for s in self.snapshots():
            if s.name == name:
                return s
        self.flush()
        try:
            self.image.create_snap(name)
        except Exception as exc:
            raise _err(exc, f"snapshot {name} of volume {self.name}") from None
        return SnapshotInfo(name, self.size)

    def snapshots(self) -> list[SnapshotInfo]:
        snaps = sorted(self.image.list_snaps(), key=lambda s: s["id"])
        return [SnapshotInfo(s["name"], int(s["size"])) for s in snaps]

    def delete_snapshot(self, name: str) -> None:
        with self._lock:
            img = self._snap_images.pop(name, None)
            if img is not None:
                img.close()
        if any(s.name == name for s in self.snapshots()):
            self.image.remove_snap(name)

    def _snap(self, name: str) -> Any:
        with self._lock:
            img = self._snap_images.get(name)
            if img is None:
                _, rbd = _rbd()
                try:
                    img = rbd.Image(
                        self.store.ioctx, self.image_name, snapshot=name, read_only=True
                    )
                except rbd.ImageNotFound:
                    raise VolumeError(f"volume {self.name} has no snapshot {name}") from None
                self._snap_images[name] = img
            return img

    def read_snapshot(self, name: str, offset: int, length: int) -> bytes:
        img = self._snap(name)
        length = max(0, min(length, int(img.size()) - offset))
        return bytes(img.read(offset, length)) if length else b""

    def direct_source(self, name: str) -> dict[str, Any] | None:
        spec: dict[str, Any] = {
            "driver": "rbd",
            "pool": self.store.pool,
            "image": self.image_name,
            "snapshot": name,
        }
        if self.store.conf:
            spec["conf"] = self.store.conf
        return spec

    def close(self) -> None:
        with self._lock:
            for img in self._snap_images.values():
                img.close()
            self._snap_images = {}
        self.image.close()


class RbdStore(VolumeStore):
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        q = parse_qs(parts.query)
        self.pool = parts.netloc or "rbd"
        self.prefix = q.get("prefix", ["obdr."])[0]
        self.conf = q.get("conf", [os.environ.get("CEPH_CONF", "")])[0]
        self.url = url
        rados, _ = _rbd()
        try:
            self.cluster = rados.Rados(conffile=self.conf)
            self.cluster.connect(timeout=20)
            self.ioctx = self.cluster.open_ioctx(self.pool)
        except Exception as exc:
            raise VolumeError(
                f"cannot reach Ceph pool {self.pool!r} ({exc})",
                "check the conf and keyring (CEPH_CONF, CEPH_KEYRING)",
            ) from None
        self._open: dict[str, RbdVolume] = {}
        self._lock = threading.Lock()

    def open(self, name: str, size: int | None = None) -> Volume:
        check_name(name)
        _, rbd = _rbd()
        with self._lock:
            vol = self._open.get(name)
            if vol is not None:
                return vol
            if self.prefix + name not in rbd.RBD().list(self.ioctx):
                if size is None:
                    raise VolumeError(f"volume {name} does not exist in pool {self.pool}")
                try:
                    # layering only: the gateway is the one writer of a volume (the host's
                    # lease); exclusive-lock would make a restarted gateway wait for a
                    # killed one's lock to be broken before its first write
                    rbd.RBD().create(
                        self.ioctx,
                        self.prefix + name,
                        size,
                        old_format=False,
                        features=rbd.RBD_FEATURE_LAYERING,
                    )
                except Exception as exc:
                    raise _err(exc, f"volume {name}") from None
            vol = self._open[name] = RbdVolume(self, name)
            return vol

    def names(self) -> list[str]:
        _, rbd = _rbd()
        return sorted(
            n[len(self.prefix) :] for n in rbd.RBD().list(self.ioctx) if n.startswith(self.prefix)
        )

    def delete(self, name: str) -> None:
        _, rbd = _rbd()
        with self._lock:
            vol = self._open.pop(name, None)
            if vol is not None:
                vol.close()
        image = self.prefix + name
        if image not in rbd.RBD().list(self.ioctx):
            return
        with rbd.Image(self.ioctx, image) as img:
            for s in list(img.list_snaps()):
                img.remove_snap(s["name"])
        rbd.RBD().remove(self.ioctx, image)

    def close(self) -> None:
        with self._lock:
            for v in self._open.values():
                v.close()
            self._open = {}
        self.ioctx.close()
        self.cluster.shutdown()


register_backend("rbd", RbdStore)
