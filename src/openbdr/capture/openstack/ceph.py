"""The Ceph side: RBD snapshots behind Cinder snapshots, read with a key of their own.

The proxy needs only `mon 'profile rbd' osd 'profile rbd-read-only pool=<volumes pool>'`:
it opens images at a snapshot, read-only, asks for their diffs and reads blocks; Cinder
creates and deletes the snapshots. Every call that could wait for an unreachable cluster
has a timeout, so a broken storage network is one error, not a hung sync.
"""

from __future__ import annotations

import bisect
import errno
import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ...blocks import BLOCK_SIZE, block_span
from ...extents import Extent, from_blocks, normalize, subtract
from ..agentless import AgentlessDisk, DiskPlan
from ..base import ChangeToken
from ..platform import PlatformError

log = logging.getLogger(__name__)

#: the largest read sent to RBD: one default object, one OSD op
REQUEST = 4 << 20
#: extents of one object this close together are one request (the gap read and dropped):
#: a guest's scattered 4 KiB writes would otherwise be one OSD op each
GAP = 64 << 10
#: a block whose changed bytes are at least this share of it is read whole from RBD: one
#: request instead of its pieces, and no read of the previous point's copy for the rest
#: (measured on the corpus's day of changes, 616 blocks at most half changed cost more
#: through the previous point than the 187 MiB of RBD reads they saved)
DENSE = 1 / 8
#: bytes read ahead of the engine per disk, in parallel
READ_AHEAD = 32 << 20
READ_THREADS = 6


def rbd_snap(snapshot_id: str) -> str:
    """Cinder's RBD driver names a snapshot's RBD snapshot `snapshot-<id>`."""
    return f"snapshot-{snapshot_id}"


def rbd_image(volume_id: str) -> str:
    """…and a volume's RBD image `volume-<id>`."""
    return f"volume-{volume_id}"


class Ceph:
    """One cluster connection and the volumes pool, opened with the proxy's own key."""

    def __init__(self, options: dict[str, Any], credentials: dict[str, Any]) -> None:
        import rados

        self.pool = str(options.get("ceph_pool") or "volumes")
        self.user = str(options.get("ceph_user") or "openbdr")
        conffile = str(options.get("ceph_conf") or "/etc/ceph/ceph.conf")
        timeout = str(int(options.get("ceph_timeout") or 20))
        conf = {
            "client_mount_timeout": timeout,  # the mon handshake of connect()
            "rados_mon_op_timeout": timeout,
            "rados_osd_op_timeout": str(int(options.get("ceph_op_timeout") or 120)),
        }
        if credentials.get("ceph_key"):
            conf["key"] = str(credentials["ceph_key"])
            conf["keyring"] = ""
        elif options.get("ceph_keyring"):
            conf["keyring"] = str(options["ceph_keyring"])
        where = f"Ceph cluster of {conffile} as client.{self.user}"
        try:
            self.cluster = rados.Rados(conffile=conffile, rados_id=self.user, conf=conf)
        except rados.Error as exc:
            raise PlatformError(
                f"{where}: cannot read the configuration ({exc})",
                "give option ceph_conf, the ceph.conf of the cluster behind Cinder",
            ) from None
        try:
            self.cluster.connect()
        except rados.TimedOut:
            self.cluster.shutdown()
            raise PlatformError(
                f"{where}: no monitor answered within {timeout} s",
                "check the storage network from the proxy to the mons (mon host in ceph.conf)",
            ) from None
        except (rados.PermissionDeniedError, rados.PermissionError):
            self.cluster.shutdown()
            raise PlatformError(
                f"{where}: the monitors refused the key",
                "check the keyring (option ceph_keyring or credential ceph_key) and user",
            ) from None
        except rados.Error as exc:
            self.cluster.shutdown()
            hint = "check the keyring and ceph.conf"
            if getattr(exc, "errno", None) == errno.ENOENT:
                hint = "no key found: give option ceph_keyring or credential ceph_key"
            raise PlatformError(f"{where}: cannot connect ({exc})", hint) from None
        try:
            self.ioctx = self.cluster.open_ioctx(self.pool)
        except rados.Error as exc:
            self.cluster.shutdown()
            raise PlatformError(
                f"{where}: cannot open pool {self.pool!r} ({exc})",
                "set option ceph_pool to Cinder's rbd_pool; the key needs "
                f"osd 'profile rbd-read-only pool={self.pool}'",
            ) from None
        self.where = where
        self.nova_pool = str(options.get("nova_pool") or "vms")
        self._nova: Any = None

    def nova(self) -> Any:
        """The ioctx of Nova's images pool (ephemeral disks `<instance>_disk`)."""
        import rados

        if self._nova is None:
            try:
                self._nova = self.cluster.open_ioctx(self.nova_pool)
            except rados.Error as exc:
                raise PlatformError(
                    f"{self.where}: cannot open Nova's pool {self.nova_pool!r} ({exc})",
                    "set option nova_pool to Nova's images_rbd_pool; the key needs "
                    f"osd 'profile rbd pool={self.nova_pool}' to snapshot ephemeral disks",
                ) from None
        return self._nova

    def ephemeral_snaps(self, image: str) -> set[str] | None:
        """Snapshot names of an ephemeral disk's image (None: no such image)."""
        import rbd

        try:
            with rbd.Image(self.nova(), image, read_only=True) as img:
                return {s["name"] for s in img.list_snaps()}
        except rbd.ImageNotFound:
            return None

    def ephemeral_size(self, image: str) -> int | None:
        import rbd

        try:
            with rbd.Image(self.nova(), image, read_only=True) as img:
                return int(img.size())
        except rbd.ImageNotFound:
            return None

    def ephemeral_snap(self, image: str, snap: str, create: bool) -> None:
        """Create or remove an RBD snapshot of an ephemeral disk (Nova has no API for it)."""
        import rbd

        try:
            with rbd.Image(self.nova(), image) as img:
                if create:
                    img.create_snap(snap)
                elif snap in {s["name"] for s in img.list_snaps()}:
                    img.remove_snap(snap)
        except rbd.PermissionError:
            raise PlatformError(
                f"{self.where}: may not snapshot {self.nova_pool}/{image}",
                f"give the key osd 'profile rbd pool={self.nova_pool}' for ephemeral disks",
            ) from None

    def open_ephemeral(self, image: str, snap: str) -> Any:
        import rbd

        try:
            return rbd.Image(self.nova(), image, snapshot=snap, read_only=True)
        except (rbd.ImageNotFound, rbd.ObjectNotFound):
            raise PlatformError(f"no RBD snapshot {self.nova_pool}/{image}@{snap}",
                                "run the sync again") from None

    def snaps(self, volume_id: str) -> set[str] | None:
        """RBD snapshot names of a volume's image (None: no such image)."""
        import rbd

        try:
            with rbd.Image(self.ioctx, rbd_image(volume_id), read_only=True) as img:
                return {s["name"] for s in img.list_snaps()}
        except rbd.ImageNotFound:
            return None
        except rbd.PermissionError:
            raise PlatformError(
                f"{self.where}: may not read image {self.pool}/{rbd_image(volume_id)}",
                f"give the key osd 'profile rbd-read-only pool={self.pool}'",
            ) from None

    def open(self, volume_id: str, snapshot_id: str) -> Any:
        import rbd

        name, snap = rbd_image(volume_id), rbd_snap(snapshot_id)
        try:
            return rbd.Image(self.ioctx, name, snapshot=snap, read_only=True)
        except (rbd.ImageNotFound, rbd.ObjectNotFound):
            raise PlatformError(
                f"Cinder snapshot {snapshot_id} has no RBD snapshot {self.pool}/{name}@{snap}",
                "is the volume on a Cinder RBD backend whose rbd_pool is option ceph_pool?",
            ) from None

    def close(self) -> None:
        try:
            if self._nova is not None:
                self._nova.close()
            self.ioctx.close()
        finally:
            self.cluster.shutdown()


class RbdDisk(AgentlessDisk):
    """A Cinder volume at a Cinder snapshot, read from its RBD snapshot.

    Changed extents are `diff_iterate(from_snapshot=base)`; what the diff reports as not
    existing (discarded, trimmed) is zero and not read. A full pass starts from the
    allocated extents (the diff from nothing). Reads of up to one object go out ahead of
    the engine, several at once."""

    #: the engine takes the bytes of a touched block that no extent lists from the
    #: parent point: only the bytes RBD reports changed are read
    partial_blocks = True

    def __init__(
        self,
        plan: DiskPlan,
        base: str | None,
        image: Any,
        volume_id: str,
        snapshot_id: str,
        base_snap: str | None,
        where: str,
        exact: bool = False,
    ) -> None:
        super().__init__("openstack", plan, base)
        import rbd

        self.image = image
        self.volume_id = volume_id
        self.snapshot_id = snapshot_id
        self.base_snap = base_snap
        self.where = where
        fast = bool(image.features() & rbd.RBD_FEATURE_FAST_DIFF)
        self.whole_object = fast and not (image.flags() & rbd.RBD_FLAG_FAST_DIFF_INVALID)
        #: refine fast-diff's whole objects to the bytes written (option rbd_exact)
        self.exact = exact
        self._read_list: list[Extent] | None = None
        self._diff: tuple[list[Extent], list[Extent]] | None = None
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix=f"rbd-{plan.name[:8]}")
        #: (request index, length, its read) in plan order
        self._ahead: deque[tuple[int, int, Future[bytes]]] = deque()
        self._plan: list[tuple[int, int]] = []
        self._starts: list[int] = []
        self._next = 0
        self._bytes = 0
        self._lock = threading.Lock()

    def _iterate(self, from_snap: str | None, ranges: Sequence[Extent] | None = None,
                 whole_object: bool | None = None) -> tuple[list[Extent], list[Extent]]:
        data: list[Extent] = []
        gone: list[Extent] = []

        def cb(offset: int, length: int, exists: bool) -> int:
            (data if exists else gone).append(Extent(offset, length))
            return 0

        whole = self.whole_object if whole_object is None else whole_object
        for e in ranges if ranges is not None else [Extent(0, self.size)]:
            self.image.diff_iterate(e.offset, e.length, from_snap, cb, include_parent=True,
                                    whole_object=whole)
        return normalize(data), normalize(gone)

    def allocation(self) -> tuple[list[Extent], list[Extent]]:
        if self.incremental:  # zero = what the diff since the base says no longer exists
            data, _ = self._iterate(None)
            return data, self._changes()[1]
        return self._iterate(None)

    def _changes(self) -> tuple[list[Extent], list[Extent]]:
        """The bytes written since the base. Whole objects (the object map of fast-diff)
        say which objects changed at no cost; within them the exact diff (the objects'
        snapshot lists) says which bytes: a guest's 4 KiB writes do not cost 4 MiB reads.
        The rest of a touched block comes from the previous point (`partial_blocks`)."""
        if self._diff is None:
            if self.whole_object and self.exact:
                written, gone = self._iterate(self.base_snap)
                objects = normalize([*written, *gone])
                self._diff = self._iterate(self.base_snap, objects, whole_object=False)
            else:
                self._diff = self._iterate(self.base_snap)
        return self._diff

    def changed(self) -> list[Extent]:
        written, gone = self._changes()
        return normalize([*written, *gone])

    def extents(self) -> list[Extent]:
        """What to read: of the changes, only what exists (the rest is `zero_extents`);
        blocks mostly changed are read whole."""
        if self._read_list is not None:
            return self._read_list
        listed = super().extents()
        if self.incremental:
            listed = self._dense_whole(subtract(listed, self._zero))
            self._listed = listed
            self.plan_reads(listed)
        self._read_list = listed
        log.info("%s: %d bytes to read in %d RBD requests of %d bytes", self.where,
                 sum(e.length for e in listed), len(self._plan), sum(n for _, n in self._plan))
        return listed

    def _dense_whole(self, listed: list[Extent]) -> list[Extent]:
        covered: dict[int, int] = {}
        for e in listed:
            pos = e.offset
            while pos < e.end:
                b = pos // BLOCK_SIZE
                stop = min(e.end, (b + 1) * BLOCK_SIZE)
                covered[b] = covered.get(b, 0) + stop - pos
                pos = stop
        dense = [b for b, n in covered.items()
                 if n < block_span(b, self.size) and n >= DENSE * block_span(b, self.size)]
        if not dense:
            return listed
        return subtract(normalize([*listed, *from_blocks(dense, self.size)]), self._zero)

    # -- reading ahead -------------------------------------------------------------------
    def plan_reads(self, extents: Sequence[Extent]) -> None:
        """Requests of up to `REQUEST` bytes within one RBD object, extents less than
        `GAP` apart joined, fetched `READ_AHEAD` bytes ahead of the engine, which asks
        for their pieces in order."""
        obj = max(1 << 12, int(self.image.stat().get("obj_size") or REQUEST))
        limit = min(REQUEST, obj)
        reqs: list[tuple[int, int]] = []
        for e in extents:
            pos = e.offset
            if reqs:
                start, length = reqs[-1]
                if (pos - (start + length) <= GAP and pos // obj == start // obj
                        and e.end - start <= limit):
                    reqs[-1] = (start, e.end - start)
                    continue
            while pos < e.end:
                stop = min(e.end, pos + limit, (pos // obj + 1) * obj)
                reqs.append((pos, stop - pos))
                pos = stop
        with self._lock:
            self._plan, self._next = reqs, 0
            self._starts = [o for o, _ in reqs]
            self._ahead.clear()
            self._bytes = 0

    def _fill(self) -> None:
        while self._next < len(self._plan) and (
                not self._ahead or self._bytes + self._plan[self._next][1] <= READ_AHEAD):
            off, length = self._plan[self._next]
            self._ahead.append((self._next, length,
                                self._pool.submit(self.image.read, off, length)))
            self._next += 1
            self._bytes += length

    def _planned(self, offset: int, length: int) -> memoryview | None:
        """The bytes at `offset` from the planned request that holds them, as RBD returned
        them (no copy); None when no planned request holds them all."""
        import rbd

        with self._lock:
            j = bisect.bisect_right(self._starts, offset) - 1
            if j < 0 or offset + length > self._plan[j][0] + self._plan[j][1]:
                return None
            start = self._ahead[0][0] if self._ahead else self._next
            if j >= self._next or j < start:  # outside the window: move it here
                self._ahead.clear()
                self._bytes = 0
                self._next = j
            else:
                while self._ahead[0][0] < j:  # requests the engine no longer needs
                    self._bytes -= self._ahead.popleft()[1]
            self._fill()
            fut = self._ahead[0][2]
            at = offset - self._plan[j][0]
        try:
            data = fut.result()
        except rbd.Error as exc:
            raise OSError(errno.EIO, f"RBD read of {self.where} failed: {exc}") from None
        return memoryview(data)[at:at + length]

    def _read(self, offset: int, length: int) -> bytes | memoryview:
        import rbd

        data = self._planned(offset, length)
        if data is not None:
            return data
        try:
            return self.image.read(offset, length)
        except rbd.Error as exc:
            raise OSError(errno.EIO, f"RBD read of {self.where} failed: {exc}") from None

    def view(self, offset: int, length: int) -> memoryview | None:
        """A block read whole, straight from its request's buffer: hashed and stored
        without the 1 MiB copy into the engine's buffer. None when no planned request
        holds it, or when its read failed (`read_into` then raises the error the engine
        reports)."""
        if length <= 0 or offset + length > self.size:
            return None
        try:
            return self._planned(offset, length)
        except OSError:
            return None

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        n = min(len(buf), max(0, self.size - offset))
        if n <= 0:
            return 0
        data = self._read(offset, n)
        memoryview(buf)[: len(data)] = data
        return len(data)

    @property
    def token(self) -> ChangeToken:
        return ChangeToken(
            "openstack",
            {"base": self.base, "size": self.size, "volume": self.volume_id,
             "snapshot": self.snapshot_id},
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "base": self.base,
                "snapshot": self.snapshot_id}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.image.close()
        except Exception as exc:  # closing is best effort; the snapshot is read already
            log.debug("closing %s: %s", self.where, exc)
