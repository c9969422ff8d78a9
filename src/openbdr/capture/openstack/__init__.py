"""Platform and source type `openstack`: instances whose Cinder volumes live in Ceph RBD.

Agentless (DESIGN.md §4): each sync snapshots every volume of the instance through the
Cinder API — one group snapshot when all its volumes are in one consistent group, else one
snapshot per volume, and the point says `crash-per-disk` then — waits until they are
available, and reads the RBD snapshots behind them (`volume-<id>@snapshot-<id>`, the
Cinder RBD driver's naming) with a Ceph key of its own. The changes are the RBD diff since
the previous sync's snapshot; after the point commits the previous snapshot is deleted
through Cinder (the shared flow of `capture.agentless`). See docs/openstack.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ...errors import SourceError
from ..agentless import (
    AgentlessDisk,
    AgentlessHost,
    DiskPlan,
    PlatformOps,
    Session,
    is_owned,
)
from ..base import Consistency, Host
from ..platform import VM, Platform, PlatformError, PlatformType, VMDisk, register_platform
from ..registry import SourceType, register_source
from .api import CREDENTIALS, api, connect
from .ceph import Ceph, RbdDisk, rbd_image, rbd_snap

log = logging.getLogger(__name__)

GIB = 1 << 30
#: Nova's power_state codes (nova/compute/power_state.py)
POWER = {0: "nostate", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed", 7: "suspended"}
#: snapshot metadata naming the OpenBDR host a snapshot was made for
HOST_KEY = "openbdr-host"
#: the group spec that makes Cinder take a group's snapshots at one instant
CONSISTENT = "consistent_group_snapshot_enabled"

OPTIONS = {
    "clouds_yaml": "path of a clouds.yaml when the endpoint is a cloud name",
    "region": "region name",
    "ceph_conf": "ceph.conf of the cluster behind Cinder (default /etc/ceph/ceph.conf)",
    "ceph_user": "Ceph client id (default openbdr)",
    "ceph_keyring": "keyring file of that client (or credential ceph_key)",
    "ceph_pool": "Cinder's rbd_pool (default volumes)",
    "snapshot_timeout": "seconds a snapshot may stay in `creating` (default 600)",
    "consistency_groups": "use group snapshots when the volumes share a consistent group "
    "(default true)",
    "nova_pool": "Nova's images_rbd_pool, for instances booted from an image (default vms)",
    "rbd_exact": "true: of the objects fast-diff names, read only the bytes written in them "
    "(the rest of partly changed blocks from the previous point), for sparse changes; "
    "default false: the whole objects (as fast on the benchmark corpus's dense changes, "
    "without the exact diff's 0.5 s)",
    "rbd_diff": "false: ignore RBD diffs, every sync reads all valid data and stores what "
    "differs from the previous point (hash-compare)",
}


def _image_id(image: Any) -> str:
    """Nova's `image` of a server: "" when booted from a volume, else {"id": …}."""
    if isinstance(image, dict):
        return str(image.get("id") or "")
    return str(getattr(image, "id", "") or "") if image else ""


def _opt_bool(value: Any, default: bool = True) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


class SnapshotTimeout(PlatformError):
    """A snapshot stayed in `creating` past `snapshot_timeout`."""


class OpenStackOps(PlatformOps):
    """One instance's volumes: Cinder snapshots taken, listed and deleted by name."""

    source = "openstack"

    def __init__(self, platform: OpenStackPlatform, server_id: str,
                 server: Any = None) -> None:
        self.platform = platform
        self.conn = platform.conn
        self.endpoint = platform.endpoint
        self.server_id = server_id
        self.timeout = float(platform.options.get("snapshot_timeout") or 600)
        self._ceph: Ceph | None = None
        self._volumes: dict[str, Any] | None = None
        self._image_boot = False
        #: the server as `open_host` just read it: the first `volumes()` need not read it
        #: again (one Nova round trip fewer per sync)
        self._server = server
        #: Cinder snapshots by name, as listed once per snapshot (`tracks` and `_open` both
        #: need the base's)
        self._named: dict[str, list[Any]] = {}

    # -- what the instance has ---------------------------------------------------------
    def volumes(self) -> dict[str, Any]:
        """The instance's attached volumes (Cinder objects) in device order, by id."""
        if self._volumes is None:
            with api(self.endpoint, f"list the volumes of instance {self.server_id}"):
                server, self._server = self._server, None
                if server is None:
                    server = self.conn.compute.get_server(self.server_id)
                self._image_boot = bool(_image_id(server.image))
                atts = list(self.conn.compute.volume_attachments(server))
                atts.sort(key=lambda a: (a.device or "", a.volume_id))
                self._volumes = {
                    a.volume_id: self.conn.block_storage.get_volume(a.volume_id) for a in atts
                }
        return self._volumes

    @property
    def root(self) -> str:
        """Nova's RBD image of the instance's ephemeral root disk (`<uuid>_disk`)."""
        return f"{self.server_id}_disk"

    def ephemeral(self) -> str | None:
        """The ephemeral root disk's image when the instance boots from an image."""
        self.volumes()
        return self.root if self._image_boot else None

    def disks(self) -> dict[str, int]:
        vols = self.volumes()
        out: dict[str, int] = {}
        root = self.ephemeral()
        if root is not None:
            size = self.ceph().ephemeral_size(root)
            if size is None:
                raise PlatformError(
                    f"instance {self.server_id} boots from an image and its root disk is not "
                    f"{self.ceph().nova_pool}/{root}",
                    "set option nova_pool to Nova's images_rbd_pool (Nova must keep "
                    "ephemeral disks in RBD), or boot the instance from a volume",
                )
            out[root] = size
        out.update({vid: int(v.size) * GIB for vid, v in vols.items()})
        if not out:
            raise PlatformError(
                f"instance {self.server_id} on {self.endpoint} has no disk",
                "attach a volume or check the instance",
            )
        return out

    def ceph(self) -> Ceph:
        if self._ceph is None:
            self._ceph = Ceph(self.platform.options, self.platform.credentials)
        return self._ceph

    # -- OpenBDR's snapshots ----------------------------------------------------------------
    def _by_name(self, snapshot: str) -> list[Any]:
        """The Cinder snapshots named `snapshot`, listed once per snapshot run."""
        if snapshot not in self._named:
            with api(self.endpoint, f"look up snapshot {snapshot}"):
                self._named[snapshot] = [
                    s for s in self.conn.block_storage.snapshots(details=True, name=snapshot)
                    if s.name == snapshot]
        return self._named[snapshot]

    def _ours(self, host: str) -> list[Any]:
        """Cinder snapshots made for `host` that are not being deleted, oldest first. The
        name prefix of host `db1` also matches host `db1-x`'s names: the `openbdr-host`
        metadata of per-volume snapshots tells them apart."""
        with api(self.endpoint, "list volume snapshots"):
            snaps = [
                s for s in self.conn.block_storage.snapshots(details=True)
                if s.name and is_owned(s.name, host) and s.status != "deleting"
                and (s.metadata or {}).get(HOST_KEY, host) == host
            ]
        snaps.sort(key=lambda s: (s.name, s.created_at or ""))
        return snaps

    def owned(self, host: str) -> list[str]:
        names = [s.name for s in self._ours(host)]
        root = self.ephemeral()
        if root is not None:
            names += sorted(n for n in self.ceph().ephemeral_snaps(root) or ()
                            if is_owned(n, host))
        return list(dict.fromkeys(names))

    def tracks(self, snapshot: str) -> set[str]:
        """Volumes whose Cinder snapshot `snapshot` is available and still has its RBD
        snapshot (someone may have removed either behind our back)."""
        out: set[str] = set()
        found = [s for s in self._by_name(snapshot) if s.status == "available"]
        for s in found:
            names = self.ceph().snaps(s.volume_id)
            if names is not None and rbd_snap(s.id) in names:
                out.add(s.volume_id)
            else:
                log.warning("RBD snapshot %s of volume %s is gone", rbd_snap(s.id), s.volume_id)
        root = self.ephemeral()
        if root is not None and snapshot in (self.ceph().ephemeral_snaps(root) or ()):
            out.add(root)
        return out

    def cleanup(self, host: str) -> list[str]:
        return []  # nothing but snapshots is left by a run; `owned` finds those

    def delete(self, snapshot: str) -> None:
        """Delete the Cinder snapshots (or group snapshot) named `snapshot`. One stuck in
        `creating` cannot be deleted yet: logged, and the next run tries again."""
        bs = self.conn.block_storage
        with api(self.endpoint, f"list snapshot {snapshot}"):
            snaps = [s for s in bs.snapshots(details=True, name=snapshot) if s.name == snapshot]
        groups = {s.group_snapshot_id for s in snaps if getattr(s, "group_snapshot_id", None)}
        for gid in groups:
            self._delete_one(lambda g=gid: bs.delete_group_snapshot(g), f"group snapshot {gid}")
        for s in snaps:
            if not getattr(s, "group_snapshot_id", None) and s.status != "deleting":
                self._delete_one(lambda s=s: bs.delete_snapshot(s), f"snapshot {s.id}")
        root = self.ephemeral()
        if root is not None:
            try:
                self.ceph().ephemeral_snap(root, snapshot, create=False)
            except PlatformError as exc:
                log.warning("%s (the next sync tries again)", exc)

    def _delete_one(self, fn: Any, what: str) -> None:
        from openstack import exceptions as osexc

        try:
            with api(self.endpoint, f"delete {what}"):
                fn()
        except PlatformError as exc:
            if isinstance(exc.__context__, osexc.NotFoundException):
                return
            log.warning("%s (the next sync tries again)", exc)

    # -- taking a snapshot --------------------------------------------------------------------
    def _group(self, vols: dict[str, Any]) -> str | None:
        """The one consistent group all the instance's volumes are in, if any."""
        if not _opt_bool(self.platform.options.get("consistency_groups")):
            return None
        ids = {getattr(v, "group_id", None) for v in vols.values()}
        if len(ids) != 1 or None in ids:
            return None
        gid = ids.pop()
        with api(self.endpoint, f"read group {gid}"):
            group = self.conn.block_storage.get_group(gid)
            gtype = self.conn.block_storage.get_group_type(group.group_type)
        spec = str((gtype.group_specs or {}).get(CONSISTENT, ""))
        return gid if spec.replace(" ", "").lower() == "<is>true" else None

    def take(self, host: str, name: str, base: str | None, plans: list[DiskPlan]) -> Session:
        ceph = self.ceph()  # before anything is created: an unreachable cluster costs nothing
        vols = self.volumes()
        bs = self.conn.block_storage
        group = self._group(vols) if len(vols) > 1 and self.ephemeral() is None else None
        desc = f"OpenBDR sync of host {host}"
        made: list[Any] = []
        gsnap = None
        eph_made = False
        root: str | None = None
        try:
            if group is not None:
                with api(self.endpoint, f"create a group snapshot of group {group}"):
                    gsnap = bs.create_group_snapshot(group_id=group, name=name,
                                                     description=desc)
                self._wait(lambda: bs.get_group_snapshot(gsnap.id), f"group snapshot {gsnap.id}")
                with api(self.endpoint, f"list the snapshots of group snapshot {gsnap.id}"):
                    made = [s for s in bs.snapshots(details=True, name=name)
                            if s.group_snapshot_id == gsnap.id]
                consistency: Consistency = "crash"
            else:
                for vid in vols:
                    with api(self.endpoint, f"snapshot volume {vid}"):
                        made.append(bs.create_snapshot(
                            volume_id=vid, name=name, description=desc, force=True,
                            metadata={HOST_KEY: host}))
                for s in made:
                    self._wait(lambda s=s: bs.get_snapshot(s.id), f"snapshot {s.id} of volume "
                               f"{s.volume_id}")
                consistency = "crash" if len(made) == 1 else "crash-per-disk"  # type: ignore[assignment]
            root = self.ephemeral()
            if root is not None:  # Nova has no snapshot API for it: RBD directly
                ceph.ephemeral_snap(root, name, create=True)
                eph_made = True
                consistency = "crash" if not made else "crash-per-disk"  # type: ignore[assignment]
            by_volume = {s.volume_id: s for s in made}
            disks = self._open(ceph, plans, by_volume, base, name)
        except BaseException as exc:
            self._undo(gsnap, made, exc)
            if eph_made and root is not None:
                try:
                    ceph.ephemeral_snap(root, name, create=False)
                except PlatformError as err:
                    log.warning("%s (the next sync removes it)", err)
            raise
        notes = [] if consistency == "crash" else [
            "per-volume snapshots: each disk is crash-consistent on its own, not across disks "
            "(put the volumes in a group whose type has consistent_group_snapshot_enabled)"]
        return Session(disks, consistency, keep=name, created=name, notes=notes)

    def _open(self, ceph: Ceph, plans: list[DiskPlan], by_volume: dict[str, Any],
              base: str | None, name: str) -> list[AgentlessDisk]:
        base_ids: dict[str, str] = {}
        if base is not None:  # as `tracks` found it in `plan`, moments ago
            for s in self._by_name(base):
                base_ids[s.volume_id] = s.id
        disks: list[AgentlessDisk] = []
        try:
            for plan in plans:
                if plan.name == self.root and self._image_boot:
                    image = ceph.open_ephemeral(plan.name, name)
                    where = f"{ceph.nova_pool}/{plan.name}@{name}"
                    if image.size() != plan.size:
                        image.close()
                        raise SourceError(f"{where} has {image.size()} bytes, not {plan.size}",
                                          "the disk was resized during the sync; run it again")
                    bsnap = base if plan.incremental else None
                    disks.append(RbdDisk(plan, name, image, plan.name, name, bsnap, where))
                    continue
                snap = by_volume.get(plan.name)
                if snap is None:
                    raise PlatformError(
                        f"Cinder made no snapshot {name} of volume {plan.name}",
                        "was the volume detached during the sync? run it again")
                image = ceph.open(plan.name, snap.id)
                where = f"{ceph.pool}/{rbd_image(plan.name)}@{rbd_snap(snap.id)}"
                if image.size() != plan.size:
                    image.close()
                    raise SourceError(
                        f"{where} has {image.size()} bytes, Cinder says {plan.size}",
                        "the volume was resized during the sync; run it again")
                bsnap = rbd_snap(base_ids[plan.name]) if plan.incremental else None
                disks.append(RbdDisk(plan, name, image, plan.name, snap.id, bsnap, where,
                                     _opt_bool(self.platform.options.get("rbd_exact"), False)))
        except BaseException:
            for d in disks:
                d.close()
            raise
        return disks

    def _wait(self, get: Any, what: str) -> None:
        """Until `available`; `error` or the timeout is one clear error."""
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        while True:
            with api(self.endpoint, f"read {what}"):
                obj = get()
            if obj.status == "available":
                return
            if obj.status in ("error", "error_deleting"):
                raise PlatformError(
                    f"OpenStack at {self.endpoint}: {what} ended in status {obj.status}",
                    "check cinder-volume's log; the next sync tries again",
                )
            if time.monotonic() >= deadline:
                raise SnapshotTimeout(
                    f"OpenStack at {self.endpoint}: {what} still {obj.status} after "
                    f"{self.timeout:g} s",
                    "check cinder-volume, or raise option snapshot_timeout",
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 2.0)

    def _undo(self, gsnap: Any, made: list[Any], exc: BaseException) -> None:
        """Delete what this run created; what Cinder refuses to delete yet is named."""
        bs = self.conn.block_storage
        left: list[str] = []
        if not isinstance(exc, SnapshotTimeout):  # a stuck one would not settle now
            self._settled(made, gsnap)
        targets = ([(lambda: bs.delete_group_snapshot(gsnap.id), f"group snapshot {gsnap.id}")]
                   if gsnap is not None else
                   [(lambda s=s: bs.delete_snapshot(s.id), f"snapshot {s.id}") for s in made])
        for fn, what in targets:
            try:
                with api(self.endpoint, f"delete {what}"):
                    fn()
            except PlatformError as err:
                log.warning("%s", err)
                left.append(what)
        if left and isinstance(exc, PlatformError):
            exc.what += (f"; {', '.join(left)} could not be deleted yet: the next sync "
                         "removes it")
            exc.args = (f"{exc.what} ({exc.hint})" if exc.hint else exc.what,)

    def _settled(self, made: list[Any], gsnap: Any) -> None:
        """Give snapshots of a failed run that are still `creating` (another volume's
        snapshot failed first) a short while to finish: Cinder deletes only settled ones."""
        bs = self.conn.block_storage
        getters = ([lambda: bs.get_group_snapshot(gsnap.id)] if gsnap is not None else
                   [lambda s=s: bs.get_snapshot(s.id) for s in made])
        deadline = time.monotonic() + min(max(self.timeout, 10.0), 60.0)
        pending = list(getters)
        while pending and time.monotonic() < deadline:
            still = []
            for get in pending:
                try:
                    if get().status == "creating":
                        still.append(get)
                except Exception:  # gone or unreadable: nothing to wait for
                    continue
            pending = still
            if pending:
                time.sleep(0.2)

    def end(self, session: Session) -> None:
        self._named.clear()  # what release lists and deletes is read afresh
        if self._ceph is not None:
            self._ceph.close()
            self._ceph = None

    def close(self) -> None:
        if self._ceph is not None:
            self._ceph.close()
            self._ceph = None


class OpenStackHost(AgentlessHost):
    def __init__(self, name: str, ops: OpenStackOps, where: str) -> None:
        super().__init__(name, ops, where)
        self.ops: OpenStackOps = ops

    def plan(self, since: Any) -> Any:
        base, plans, changes = super().plan(since)
        if since is not None and not _opt_bool(self.ops.platform.options.get("rbd_diff")):
            why = "RBD diffs are off (option rbd_diff=false): hash-compare pass"
            plans = [DiskPlan(p.name, p.size, False, why) for p in plans]
        return base, plans, changes

    def snapshot(self, since: Any) -> Any:
        self.ops._volumes = None  # the attachments as they are now
        self.ops._named.clear()
        try:
            return super().snapshot(since)
        except BaseException:
            self.ops.close()
            raise


class OpenStackPlatform(Platform):
    type = "openstack"

    def __init__(self, endpoint: str, credentials: dict[str, Any], options: dict[str, Any]):
        self.endpoint = endpoint
        self.credentials = dict(credentials)
        self.options = dict(options)
        self.conn = connect(endpoint, self.credentials, self.options)

    def test(self) -> str:
        with api(self.endpoint, "authenticate"):
            self.conn.authorize()
            project = self.conn.current_project_id
            self.conn.block_storage.get_endpoint()
            self.conn.compute.get_endpoint()
        ceph = Ceph(self.options, self.credentials)
        try:
            where = f"Ceph pool {ceph.pool} as client.{ceph.user}"
        finally:
            ceph.close()
        return f"OpenStack at {self.endpoint} (project {project}), {where}"

    def discover(self) -> list[VM]:
        out = []
        with api(self.endpoint, "list instances"):
            servers = list(self.conn.compute.servers(details=True))
            vol_cache: dict[str, Any] = {}
            for s in servers:
                out.append(self._vm(s, vol_cache))
        return out

    def _vm(self, s: Any, cache: dict[str, Any]) -> VM:
        pool = self.options.get("ceph_pool") or "volumes"
        disks = []
        if _image_id(s.image):  # booted from an image: the root disk is Nova's, in RBD
            nova = self.options.get("nova_pool") or "vms"
            disks.append(VMDisk(
                f"{s.id}_disk", int((s.flavor or {}).get("disk") or 0) * GIB, "virtio",
                f"{nova}/{s.id}_disk", "raw"))
        devices = {}
        if s.attached_volumes:
            devices = {a.volume_id: a.device for a in self.conn.compute.volume_attachments(s)}
        for att in s.attached_volumes or []:
            vid = att["id"] if isinstance(att, dict) else att.id
            if vid not in cache:
                cache[vid] = self.conn.block_storage.get_volume(vid)
            v = cache[vid]
            disks.append(VMDisk(vid, int(v.size) * GIB, "virtio", f"{pool}/{rbd_image(vid)}",
                                "raw"))
        disks.sort(key=lambda d: devices.get(d.name, "~"))
        tags = {"device:" + vid: dev for vid, dev in devices.items() if dev}
        tags.update({str(k): str(v) for k, v in (s.metadata or {}).items()})
        return VM(s.id, s.name, POWER.get(s.power_state, str(s.power_state)), tuple(disks), tags)

    def _server(self, ref: str) -> Any:
        """Nova's server of id `ref`; None when there is none (`ref` may be a name)."""
        from openstack import exceptions as osexc

        try:
            with api(self.endpoint, f"find instance {ref}"):
                return self.conn.compute.get_server(ref)
        except PlatformError as exc:
            if not isinstance(exc.__context__, osexc.NotFoundException):
                raise
        return None

    def vm(self, ref: str) -> VM:
        s = self._server(ref)
        if s is not None:
            with api(self.endpoint, f"find instance {ref}"):
                return self._vm(s, {})
        return super().vm(ref)

    def open_host(self, host: str, vm: str, options: dict[str, Any]) -> Host:
        """The server read once, by id (else found by name through discovery): its
        volumes are read by the sync that follows."""
        server = self._server(vm)
        server_id = server.id if server is not None else super().vm(vm).id
        return OpenStackHost(host, OpenStackOps(self, server_id, server),
                             f"{self.endpoint}/servers/{server_id}")

    def close(self) -> None:
        self.conn.close()


def open_platform(endpoint: str, credentials: dict[str, Any],
                  options: dict[str, Any]) -> OpenStackPlatform:
    return OpenStackPlatform(endpoint, credentials, options)


def _validate(spec: dict[str, Any]) -> None:
    plat = spec.get("platform")
    if not isinstance(plat, dict) or not isinstance(plat.get("endpoint"), str) or \
            not plat.get("endpoint") or not isinstance(spec.get("vm"), str) or not spec["vm"]:
        raise SourceError(
            "source type openstack needs `platform` {endpoint, credentials, options} and `vm`",
            'e.g. {"type": "openstack", "platform": {"endpoint": "mycloud", "credentials": '
            '{...}, "options": {"ceph_conf": "/etc/ceph/ceph.conf"}}, "vm": "<server id>"}',
        )


def _open(host: str, spec: dict[str, Any]) -> Host:
    _validate(spec)
    p = spec["platform"]
    platform = open_platform(p["endpoint"], dict(p.get("credentials") or {}),
                             dict(p.get("options") or {}))
    return platform.open_host(host, spec["vm"], dict(spec.get("options") or {}))


register_platform(PlatformType(
    "openstack", open_platform,
    "OpenStack (Keystone v3, Nova, Cinder v3) with volumes in Ceph RBD; agentless",
    credentials=CREDENTIALS, options=OPTIONS,
))
register_source(SourceType(
    "openstack", _open, _validate,
    "an OpenStack instance's Cinder RBD volumes, through the OpenStack API and Ceph",
    {"platform": "{endpoint, credentials, options}", "vm": "server id or name"},
))
