"""The state and rules of the fake OpenStack cloud, with real RBD as Cinder's backend.

Everything an OpenStack client can observe lives here: projects and users (Keystone),
servers and their volume attachments (Nova), volumes, snapshots, groups, group types and
group snapshots (Cinder). Cinder's volume service is asynchronous: a create or a delete
returns at once with `creating`/`deleting`, and a worker thread finishes it later, as the
RBD driver does: a volume is the RBD image `volume-<id>` in the pool, a snapshot is the RBD
snapshot `volume-<id>@snapshot-<id>` (cinder/volume/drivers/rbd.py). `docs/openstack.md`
lists each rule and its source.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rados
import rbd

GIB = 1 << 30
#: librbd's default features for a Cinder RBD volume (rbd_default_features = 61)
DEFAULT_FEATURES = (
    rbd.RBD_FEATURE_LAYERING
    | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
    | rbd.RBD_FEATURE_OBJECT_MAP
    | rbd.RBD_FEATURE_FAST_DIFF
    | rbd.RBD_FEATURE_DEEP_FLATTEN
)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def new_id() -> str:
    return str(uuid.uuid4())


class ApiError(Exception):
    """An error answer: HTTP status, the body's key (itemNotFound, badRequest…), message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, "itemNotFound", f"{what} {ident} could not be found.")


@dataclass
class Faults:
    """Failures injected into the fake, as a sick cloud shows them."""

    #: seconds a snapshot (or group snapshot) stays in `creating`
    snapshot_delay: float = 0.05
    #: seconds a delete stays in `deleting`
    delete_delay: float = 0.05
    #: snapshots stay in `creating` for ever (a stuck cinder-volume)
    snapshot_stuck: bool = False
    #: snapshots end in `error` (the driver failed)
    snapshot_error: bool = False
    #: (method, path substring) -> number of 500 answers still to give
    http_500: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (method, path substring) -> which matching requests (1 = the first) get a 500
    http_500_nth: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    _seen: dict[tuple[str, str], int] = field(default_factory=dict)

    def take_500(self, method: str, path: str) -> bool:
        for (m, sub), nth in self.http_500_nth.items():
            if m == method and sub in path:
                k = self._seen[(m, sub)] = self._seen.get((m, sub), 0) + 1
                if k in nth:
                    return True
        for (m, sub), n in list(self.http_500.items()):
            if n > 0 and m == method and sub in path:
                self.http_500[(m, sub)] = n - 1
                return True
        return False


@dataclass
class User:
    id: str
    name: str
    password: str
    project_id: str
    roles: list[str]


@dataclass
class AppCredential:
    id: str
    secret: str
    user_id: str
    project_id: str


@dataclass
class Volume:
    id: str
    name: str
    size: int  # GiB
    project_id: str
    bootable: bool = False
    status: str = "creating"
    group_id: str | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = field(default_factory=now)
    updated_at: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Snapshot:
    id: str
    volume_id: str
    name: str
    description: str
    size: int
    project_id: str
    status: str = "creating"
    metadata: dict[str, str] = field(default_factory=dict)
    group_snapshot_id: str | None = None
    created_at: str = field(default_factory=now)
    updated_at: str | None = None


@dataclass
class Group:
    id: str
    name: str
    group_type: str
    volume_types: list[str]
    project_id: str
    status: str = "available"
    created_at: str = field(default_factory=now)


@dataclass
class GroupSnapshot:
    id: str
    group_id: str
    group_type_id: str
    name: str
    description: str
    project_id: str
    status: str = "creating"
    created_at: str = field(default_factory=now)


@dataclass
class Server:
    id: str
    name: str
    project_id: str
    user_id: str
    status: str = "ACTIVE"
    power_state: int = 1  # RUNNING
    #: (volume id, device, attachment id), in attachment order
    volumes: list[tuple[str, str, str]] = field(default_factory=list)
    image: str = ""  # "" = booted from a volume
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    metadata: dict[str, str] = field(default_factory=dict)


class Cloud:
    """One region of a cloud: one project space, one Cinder RBD backend (a pool)."""

    def __init__(self, pool: str = "rbd", ceph_conf: str = "", features: int = DEFAULT_FEATURES):
        self.lock = threading.RLock()
        self.faults = Faults()
        self.pool = pool
        self.features = features
        self.cluster = rados.Rados(conffile=ceph_conf)  # '' = $CEPH_CONF, admin keyring
        self.cluster.connect()
        self.ioctx = self.cluster.open_ioctx(pool)
        self.domain = {"id": "default", "name": "Default"}
        self.projects: dict[str, str] = {}  # id -> name
        self.users: dict[str, User] = {}
        self.app_creds: dict[str, AppCredential] = {}
        self.tokens: dict[str, tuple[User, str, float]] = {}  # token -> user, project, expiry
        self.servers: dict[str, Server] = {}
        self.volumes: dict[str, Volume] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.group_types: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, Group] = {}
        self.group_snapshots: dict[str, GroupSnapshot] = {}
        self.timers: list[threading.Timer] = []
        #: snapshots (and their group snapshot) held in `creating` by `Faults.snapshot_stuck`
        self.stuck: list[tuple[list[Snapshot], GroupSnapshot | None]] = []
        #: every request seen: (method, path), for tests that check what a client did
        self.requests: list[tuple[str, str]] = []

    def close(self) -> None:
        for t in self.timers:
            t.cancel()
        self.ioctx.close()
        self.cluster.shutdown()

    # -- operator helpers (what an admin sets up before the test) ------------------------
    def add_project(self, name: str) -> str:
        pid = uuid.uuid4().hex
        self.projects[pid] = name
        return pid

    def add_user(self, name: str, password: str, project_id: str, roles: list[str]) -> User:
        user = User(uuid.uuid4().hex, name, password, project_id, roles)
        self.users[user.id] = user
        return user

    def add_app_credential(self, user: User) -> AppCredential:
        cred = AppCredential(uuid.uuid4().hex, uuid.uuid4().hex, user.id, user.project_id)
        self.app_creds[cred.id] = cred
        return cred

    def add_group_type(self, name: str, consistent: bool) -> str:
        gid = new_id()
        specs = {"consistent_group_snapshot_enabled": "<is> True"} if consistent else {}
        self.group_types[gid] = {"id": gid, "name": name, "description": None,
                                 "is_public": True, "group_specs": specs}
        return gid

    def add_group(self, name: str, group_type: str, project_id: str) -> Group:
        group = Group(new_id(), name, group_type, ["rbd"], project_id)
        self.groups[group.id] = group
        return group

    def add_volume(
        self, name: str, size_gib: int, project_id: str, bootable: bool = False,
        group_id: str | None = None, features: int | None = None,
    ) -> Volume:
        """A volume created synchronously (the test's set-up, not the async API path);
        `features`: the RBD image features (default: librbd's, with fast-diff)."""
        vol = Volume(new_id(), name, size_gib, project_id, bootable, group_id=group_id)
        self._rbd_create(vol, features)
        vol.status = "available"
        self.volumes[vol.id] = vol
        return vol

    def add_server(self, name: str, project_id: str, user_id: str,
                   volumes: list[Volume] = (),  # type: ignore[assignment]
                   root_gib: int | None = None) -> Server:
        """A server; with `root_gib` booted from an image, its ephemeral root disk the RBD
        image `<uuid>_disk` in the pool (Nova's libvirt RBD image backend)."""
        server = Server(new_id(), name, project_id, user_id)
        if root_gib is not None:
            server.image = new_id()
            rbd.RBD().create(self.ioctx, f"{server.id}_disk", root_gib * GIB,
                             old_format=False, features=self.features)
        self.servers[server.id] = server
        for vol in volumes:
            self.attach(server, vol.id)
        return server

    def image_name(self, volume_id: str) -> str:
        return f"volume-{volume_id}"

    # -- Nova ----------------------------------------------------------------------------
    def attach(self, server: Server, volume_id: str, device: str | None = None) -> str:
        with self.lock:
            vol = self.volume(volume_id, server.project_id)
            if vol.status != "available":
                raise ApiError(400, "badRequest",
                               f"Invalid volume: volume {volume_id} status must be available")
            if device is None:
                device = "/dev/vd" + "abcdefghijklmnopqrstuvwxyz"[len(server.volumes)]
            att = new_id()
            server.volumes.append((vol.id, device, att))
            vol.status = "in-use"
            vol.attachments.append({
                "server_id": server.id, "attachment_id": att, "attached_at": now(),
                "host_name": "compute-1", "volume_id": vol.id, "device": device, "id": vol.id,
            })
            vol.updated_at = now()
            return att

    def server(self, server_id: str, project_id: str) -> Server:
        s = self.servers.get(server_id)
        if s is None or s.project_id != project_id:
            raise ApiError(404, "itemNotFound", f"Instance {server_id} could not be found.")
        return s

    # -- Cinder --------------------------------------------------------------------------
    def volume(self, volume_id: str, project_id: str) -> Volume:
        v = self.volumes.get(volume_id)
        if v is None or v.project_id != project_id:
            raise not_found("Volume", volume_id)
        return v

    def snapshot(self, snapshot_id: str, project_id: str) -> Snapshot:
        s = self.snapshots.get(snapshot_id)
        if s is None or s.project_id != project_id:
            raise ApiError(404, "itemNotFound", f"Snapshot {snapshot_id} could not be found.")
        return s

    def group_snapshot(self, gs_id: str, project_id: str) -> GroupSnapshot:
        g = self.group_snapshots.get(gs_id)
        if g is None or g.project_id != project_id:
            raise ApiError(404, "itemNotFound", f"GroupSnapshot {gs_id} could not be found.")
        return g

    def _later(self, delay: float, fn: Any) -> None:
        t = threading.Timer(delay, fn)
        t.daemon = True
        self.timers.append(t)
        t.start()

    def _rbd_create(self, vol: Volume, features: int | None = None) -> None:
        rbd.RBD().create(self.ioctx, self.image_name(vol.id), vol.size * GIB,
                         old_format=False,
                         features=self.features if features is None else features)

    def create_volume(self, body: dict[str, Any], project_id: str) -> Volume:
        size = body.get("size")
        if not isinstance(size, int) or size < 1:
            raise ApiError(400, "badRequest", "Invalid input received: size must be an integer "
                           "and greater than 0")
        group_id = body.get("group_id")
        if group_id is not None and group_id not in self.groups:
            raise not_found("Group", group_id)
        vol = Volume(new_id(), body.get("name") or "", size, project_id, group_id=group_id,
                     metadata=dict(body.get("metadata") or {}))
        with self.lock:
            self.volumes[vol.id] = vol

        def finish() -> None:
            self._rbd_create(vol)
            vol.status, vol.updated_at = "available", now()

        self._later(self.faults.snapshot_delay, finish)
        return vol

    def extend_volume(self, vol: Volume, new_size: Any, microversion: tuple[int, int]) -> None:
        if vol.status == "in-use" and microversion < (3, 42):
            raise ApiError(400, "badRequest", "Invalid volume: Volume status must be "
                           "'available' to extend an attached volume before microversion 3.42.")
        if vol.status not in ("available", "in-use"):
            raise ApiError(400, "badRequest", f"Invalid volume: status is {vol.status}")
        if not isinstance(new_size, int) or new_size <= vol.size:
            raise ApiError(400, "badRequest", f"Invalid input received: New size for extend "
                           f"must be greater than current size. (current: {vol.size}, "
                           f"extended: {new_size}).")
        with rbd.Image(self.ioctx, self.image_name(vol.id)) as img:
            img.resize(new_size * GIB)
        vol.size, vol.updated_at = new_size, now()

    def create_snapshot(self, body: dict[str, Any], project_id: str,
                        microversion: tuple[int, int]) -> Snapshot:
        vid = body.get("volume_id")
        if not isinstance(vid, str):
            raise ApiError(400, "badRequest", "Invalid input received: 'volume_id' is required")
        vol = self.volume(vid, project_id)
        force = body.get("force", False)
        if isinstance(force, str):
            force = force.lower() in ("true", "1", "yes")
        if microversion >= (3, 66):
            if "force" in body and not force:
                raise ApiError(400, "badRequest", "Invalid input received: the 'force' "
                               "parameter may not be false as of microversion 3.66")
        elif vol.status == "in-use" and not force:
            raise ApiError(400, "badRequest", f"Invalid volume: Volume {vid} status must be "
                           "available, but current status is: in-use.")
        if vol.status not in ("available", "in-use"):
            raise ApiError(400, "badRequest", f"Invalid volume: Volume {vid} status must be "
                           f"available, but current status is: {vol.status}.")
        snap = Snapshot(new_id(), vid, body.get("name") or "", body.get("description") or "",
                        vol.size, project_id, metadata=dict(body.get("metadata") or {}))
        with self.lock:
            self.snapshots[snap.id] = snap
        self._after_create([snap])
        return snap

    def _after_create(self, snaps: list[Snapshot], gs: GroupSnapshot | None = None) -> None:
        """cinder-volume takes the RBD snapshots when it gets to it, then marks them."""
        if self.faults.snapshot_stuck:
            self.stuck.append((snaps, gs))
            return

        def finish() -> None:
            with self.lock:
                if self.faults.snapshot_error:
                    for s in snaps:
                        s.status = "error"
                    if gs is not None:
                        gs.status = "error"
                    return
                for s in snaps:  # back to back, as the RBD driver's loop does
                    if s.id not in self.snapshots:
                        continue
                    with rbd.Image(self.ioctx, self.image_name(s.volume_id)) as img:
                        img.create_snap(f"snapshot-{s.id}")  # then protected, as the
                        img.protect_snap(f"snapshot-{s.id}")  # driver does for clones
                for s in snaps:
                    s.status, s.updated_at = "available", now()
                if gs is not None:
                    gs.status = "available"

        self._later(self.faults.snapshot_delay, finish)

    def unstick(self) -> None:
        """cinder-volume comes back: snapshots stuck in `creating` are finished now."""
        self.faults.snapshot_stuck = False
        stuck, self.stuck = self.stuck, []
        for snaps, gs in stuck:
            self._after_create(snaps, gs)

    def _rbd_remove_snap(self, snap: Snapshot) -> None:
        name = f"snapshot-{snap.id}"
        try:
            with rbd.Image(self.ioctx, self.image_name(snap.volume_id)) as img:
                # the driver logs "Unable to unprotect" and goes on
                with contextlib.suppress(rbd.InvalidArgument, rbd.ImageNotFound):
                    img.unprotect_snap(name)
                img.remove_snap(name)
        except (rbd.ImageNotFound, rbd.ObjectNotFound):
            pass  # the driver logs "Snapshot ... does not exist in backend"

    def delete_snapshot(self, snap: Snapshot, force: bool = False) -> None:
        if snap.group_snapshot_id is not None and not force:
            raise ApiError(400, "badRequest", f"Invalid snapshot: Snapshot {snap.id} is part "
                           "of a group snapshot; delete the group snapshot.")
        if snap.status not in ("available", "error") and not force:
            raise ApiError(400, "badRequest", "Invalid snapshot: Volume Snapshot status must "
                           "be available or error and must not be part of a group.")
        snap.status = "deleting"

        def finish() -> None:
            self._rbd_remove_snap(snap)
            with self.lock:
                self.snapshots.pop(snap.id, None)

        self._later(self.faults.delete_delay, finish)

    def create_group_snapshot(self, body: dict[str, Any], project_id: str) -> GroupSnapshot:
        gid = body.get("group_id")
        group = self.groups.get(gid) if isinstance(gid, str) else None
        if group is None or group.project_id != project_id:
            raise not_found("Group", str(gid))
        members = [v for v in self.volumes.values() if v.group_id == group.id]
        if not members:
            raise ApiError(400, "badRequest", f"Invalid group: group {group.id} has no volumes")
        gs = GroupSnapshot(new_id(), group.id, group.group_type, body.get("name") or "",
                           body.get("description") or "", project_id)
        snaps = [
            Snapshot(new_id(), v.id, gs.name, gs.description, v.size, project_id,
                     group_snapshot_id=gs.id)
            for v in members
        ]
        with self.lock:
            self.group_snapshots[gs.id] = gs
            for s in snaps:
                self.snapshots[s.id] = s
        self._after_create(snaps, gs)
        return gs

    def delete_group_snapshot(self, gs: GroupSnapshot) -> None:
        if gs.status not in ("available", "error"):
            raise ApiError(400, "badRequest", "Invalid GroupSnapshot: Group snapshot status "
                           "must be available or error.")
        gs.status = "deleting"
        snaps = [s for s in self.snapshots.values() if s.group_snapshot_id == gs.id]
        for s in snaps:
            s.status = "deleting"

        def finish() -> None:
            for s in snaps:
                self._rbd_remove_snap(s)
            with self.lock:
                for s in snaps:
                    self.snapshots.pop(s.id, None)
                self.group_snapshots.pop(gs.id, None)

        self._later(self.faults.delete_delay, finish)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no snapshot or volume is in a transient state (test helper)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                busy = [s for s in self.snapshots.values() if s.status in ("creating", "deleting")]
                busy += [v for v in self.volumes.values() if v.status == "creating"]
            if not busy:
                return
            time.sleep(0.02)
        raise TimeoutError(f"still busy: {busy}")
