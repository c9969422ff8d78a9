"""What every agentless source shares (DESIGN.md §4, "Agentless sources").

One flow for every platform (libvirt, OpenStack, AWS, VMware, OCI, FusionCompute):

    leftovers removed → platform snapshot of ALL the VM's disks (one instant) →
    change list since the previous platform snapshot → read → commit → release

A platform module implements `PlatformOps` (list, take and delete its own platform
snapshots; end a read session); `AgentlessHost.snapshot()` runs the flow and
`AgentlessSnapshot` keeps its promises:

- the previous platform snapshot is deleted only once the new point commits
  (`Snapshot.committed()`); without a commit the NEW one is deleted and the old base kept;
- the read session (backup job, NBD export, scratch files, attached volumes) ends on
  every path, and what a killed run left behind is recognised by its name (`owned_name`,
  or `owner_tags` where the platform has tags) and removed by the next run of that host;
- lost change tracking (base snapshot or checkpoint gone, CBT reset, a disk added or
  resized) gives a full pass of valid data, with the reason in `fallback_reason`;
- a VM that gained, lost or resized a disk since the previous point says so in
  `AgentlessSnapshot.changes`, for the control plane to raise an alert.

Valid data of a full pass is the platform's allocation narrowed by the partition table
and file systems (`image.valid_data`), as for disk images.
"""

from __future__ import annotations

import abc
import itertools
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..extents import Extent, clip, from_blocks, intersect, normalize, subtract, to_blocks, total
from .base import ChangeToken, Consistency, DiskSnapshot, Host, Snapshot
from .image import valid_data

log = logging.getLogger(__name__)

#: every platform object OpenBDR creates starts with this (snapshots, checkpoints,
#: scratch files, temporary volumes) or carries the tag `OWNER_TAG`
OWNER = "openbdr"
OWNER_TAG = "openbdr:host"
_serial = itertools.count(1)


def _slug(host: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")
    return s[:40] or "host"


def owned_prefix(host: str) -> str:
    """Prefix of every platform object made for `host`: `openbdr-<host>-`."""
    return f"{OWNER}-{_slug(host)}-"


def owned_name(host: str, now: float | None = None) -> str:
    """A new platform object name for `host`, sortable by creation time:
    `openbdr-<host>-<UTC yyyymmddThhmmss.mmm>-<pid hex>-<n>` (pid and counter tell
    concurrent makers and quick successions apart)."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}"
    return f"{owned_prefix(host)}{stamp}-{os.getpid():x}-{next(_serial)}"


def is_owned(name: str, host: str) -> bool:
    """True for names `owned_name(host)` makes: a later run may remove them."""
    return name.startswith(owned_prefix(host)) and "/" not in name


def owner_tags(host: str) -> dict[str, str]:
    """Tags that mark a platform object as OpenBDR's, for platforms that tag objects."""
    return {OWNER_TAG: _slug(host)}


def is_owned_tags(tags: dict[str, str], host: str) -> bool:
    return tags.get(OWNER_TAG) == _slug(host)


# -- what changed in the VM -------------------------------------------------------------


@dataclass(frozen=True)
class DiskChange:
    """A disk the VM gained, lost or resized since the previous point."""

    disk: str
    change: Literal["added", "removed", "resized"]
    old_size: int | None = None
    new_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.change == "added":
            return f"disk {self.disk} was added ({self.new_size} bytes): full pass"
        if self.change == "removed":
            return f"disk {self.disk} was removed: it stays in the older points"
        return f"disk {self.disk} was resized from {self.old_size} to {self.new_size} bytes"


def disk_changes(previous: dict[str, int], current: dict[str, int]) -> list[DiskChange]:
    """Compare disk sizes by name: the previous point's and the VM's now."""
    out: list[DiskChange] = []
    for name, size in current.items():
        if name not in previous:
            out.append(DiskChange(name, "added", None, size))
        elif previous[name] != size:
            out.append(DiskChange(name, "resized", previous[name], size))
    out += [DiskChange(n, "removed", s, None) for n, s in previous.items() if n not in current]
    return out


# -- tokens -------------------------------------------------------------------------


@dataclass
class PreviousPoint:
    """What the previous point's token says of the platform snapshot it was read from."""

    #: name of the platform snapshot (checkpoint, snapshot id) the point was read from
    base: str | None = None
    #: per disk name: size and the platform's own fields
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {n: int(d.get("size", -1)) for n, d in self.disks.items()}


def previous_point(since: ChangeToken | None, source: str) -> PreviousPoint | None:
    """Read the token the sync stored (`{disk: {"source", "value"}}`, see `sync.snap_token`);
    None when there is no previous point or it came from another source type."""
    if since is None or since.source != source:
        return None
    prev = PreviousPoint()
    for name, tok in since.value.items():
        value = tok.get("value") if isinstance(tok, dict) else None
        if not isinstance(value, dict):
            continue
        prev.disks[str(name)] = value
        if value.get("base"):
            prev.base = str(value["base"])
    return prev


# -- the platform side ----------------------------------------------------------------


@dataclass(frozen=True)
class DiskPlan:
    """What to read of one disk: changes since `base` (incremental) or valid data."""

    name: str
    size: int
    incremental: bool
    fallback_reason: str | None = None


@dataclass
class Session:
    """An open platform snapshot: its disks, ready to read, and what it holds."""

    disks: list[AgentlessDisk]
    consistency: Consistency
    #: the platform snapshot the next sync compares against (None: none was made)
    keep: str | None
    #: the platform snapshot made by this run (deleted unless the point commits)
    created: str | None
    #: notes for the log and the point (quiesce failed, domain shut off, …)
    notes: list[str] = field(default_factory=list)

    def export_uri(self, disk: str) -> str | None:
        """Where the frozen `disk` can be read independently of the source (an NBD URI),
        for tools and tests; None when the platform offers no such view."""
        return None


class PlatformOps(abc.ABC):
    """The part each platform implements; `AgentlessHost` runs the shared flow over it."""

    #: source type name, also the `ChangeToken.source` of its points
    source: str

    @abc.abstractmethod
    def disks(self) -> dict[str, int]:
        """The VM's protectable disks now: name -> size. Raises `PlatformError` for a
        disk that cannot be protected (one clear line)."""

    @abc.abstractmethod
    def owned(self, host: str) -> list[str]:
        """Platform snapshots of this VM made for `host` (`is_owned`), oldest first."""

    @abc.abstractmethod
    def tracks(self, snapshot: str) -> set[str]:
        """Disks whose changes since `snapshot` the platform can list (empty: it is gone)."""

    @abc.abstractmethod
    def cleanup(self, host: str) -> list[str]:
        """End read sessions a killed run of `host` left (jobs, exports, scratch files,
        attached volumes); return what was removed."""

    @abc.abstractmethod
    def take(self, host: str, name: str, base: str | None, plans: list[DiskPlan]) -> Session:
        """Snapshot all disks at one instant as `name` and open them for reading; `base`
        is the previous point's platform snapshot when it still tracks changes (the
        plans say which disks read changes since it)."""

    @abc.abstractmethod
    def end(self, session: Session) -> None:
        """End the read session (the snapshot itself stays until `delete`)."""

    @abc.abstractmethod
    def delete(self, snapshot: str) -> None:
        """Delete one platform snapshot made by OpenBDR."""

    def resume(
        self, host: str, leftovers: list[str], base: str | None, plans: list[DiskPlan]
    ) -> Session | None:
        """Open again one of `leftovers` (platform snapshots of runs that never committed,
        oldest first) instead of taking a new one, so that the engine resumes from the
        killed run's checkpoint (same fingerprints); None: take a new one. Only a platform
        whose snapshots stay readable after the run that made them (EBS) may; the others
        remove every leftover."""
        return None

    def kept(self, snapshot: str) -> None:  # noqa: B027 - most platforms need nothing
        """The point read from `snapshot` committed: it is the next base (a platform may
        mark it, so that it is never taken for a leftover)."""


class AgentlessDisk(DiskSnapshot):
    """A disk of a platform snapshot: the shared change-list and valid-data logic.

    The platform gives its allocation (`allocation()`: data and known-zero extents) and,
    for an incremental, the changed extents (`changed()`); reading is its own."""

    #: the engine takes the bytes of a touched 1 MiB block that no extent lists from the
    #: previous point (the contract's incremental rule); False widens changed extents to
    #: whole blocks, for an engine that does not
    partial_blocks = True

    def __init__(self, source: str, plan: DiskPlan, base: str | None) -> None:
        self.source = source
        self.name = plan.name
        self.size = plan.size
        self.incremental = plan.incremental
        self.fallback_reason = plan.fallback_reason
        self.base = base  # the platform snapshot this disk's next sync compares against
        self.layout: dict[str, Any] | None = None
        #: bytes the platform reported changed (incremental), for accounting and tests
        self.changed_bytes = 0
        self._zero: list[Extent] = []
        self._listed: list[Extent] | None = None

    @abc.abstractmethod
    def allocation(self) -> tuple[list[Extent], list[Extent]]:
        """(extents holding data, extents known to read as zero) of the whole disk."""

    @abc.abstractmethod
    def changed(self) -> list[Extent]:
        """Extents changed since the base snapshot (only asked when `incremental`)."""

    def extents(self) -> list[Extent]:
        if self._listed is not None:
            return self._listed
        data, zero = self.allocation()
        if self.incremental:
            changed = clip(self.changed(), self.size)
            self.changed_bytes = total(changed)
            self._zero = intersect(changed, zero)
            listed = (
                subtract(changed, self._zero)  # known zero: recorded unread
                if self.partial_blocks
                else from_blocks(to_blocks(changed, self.size), self.size)
            )
            self.valid_bytes = total(data)
        else:
            self._zero = clip(zero, self.size)
            listed, layout = valid_data(self, data, f"{self.source} disk {self.name}")
            self.layout = layout.to_json()
            why = layout.fallbacks()
            if why:
                self.fallback_reason = "; ".join(
                    filter(None, [self.fallback_reason, "valid data: " + "; ".join(why)])
                )
            self.valid_bytes = total(listed)
        self._listed = normalize(listed)
        self.plan_reads(self._listed)
        return self._listed

    def zero_extents(self) -> list[Extent]:
        if self._listed is None:
            self.extents()
        return self._zero

    def plan_reads(self, extents: Sequence[Extent]) -> None:
        """The extents the engine is about to read, in order: a reader may fetch ahead."""

    @property
    def token(self) -> ChangeToken:
        return ChangeToken(self.source, {"base": self.base, "size": self.size})

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "base": self.base}

    def close(self) -> None:
        """Close the reader (the session's `end` releases the platform side)."""


class AgentlessSnapshot(Snapshot):
    """A platform snapshot being read; leaving the context releases it (see module doc)."""

    def __init__(
        self,
        ops: PlatformOps,
        host: str,
        session: Session,
        changes: list[DiskChange],
    ) -> None:
        self.ops = ops
        self.host = host
        self.session = session
        self.disks = list(session.disks)
        self.consistency = session.consistency
        #: disks the VM gained, lost or resized since the previous point (for an alert)
        self.changes = changes
        self.notes = list(session.notes)
        self._committed = False
        self._released = False

    def committed(self) -> None:
        self._committed = True

    def release(self) -> None:
        """End the read session; then delete the old base (committed) or the new snapshot
        (not committed). Failures are logged, not raised: the next run removes leftovers."""
        if self._released:
            return
        self._released = True
        for d in self.session.disks:
            _quietly(d.close, f"close disk {d.name}")
        _quietly(lambda: self.ops.end(self.session), "end the read session")
        if self._committed:
            keep = self.session.keep
            if keep is not None:
                _quietly(lambda: self.ops.kept(keep), f"mark {keep} as the next base")
            owned: list[str] = []
            _quietly(lambda: owned.extend(self.ops.owned(self.host)), "list old snapshots")
            for name in owned:
                if name != keep:
                    _quietly(lambda n=name: self.ops.delete(n), f"delete {name}")
        elif self.session.created is not None:
            _quietly(lambda: self.ops.delete(self.session.created or ""), "delete the snapshot")


def _quietly(fn: Any, what: str) -> None:
    try:
        fn()
    except Exception as exc:  # a leftover is removed by the next run
        log.warning("could not %s: %s (the next sync removes it)", what, exc)


class AgentlessHost(Host):
    """A VM protected through its platform's API: nothing runs in the VM."""

    def __init__(self, name: str, ops: PlatformOps, where: str) -> None:
        self.name = name
        self.ops = ops
        self.where = where

    def describe(self) -> str:
        return f"{self.ops.source}:{self.where}"

    def plan(
        self, since: ChangeToken | None
    ) -> tuple[str | None, list[DiskPlan], list[DiskChange]]:
        """Which disks can be read incrementally from which base, and why not."""
        prev = previous_point(since, self.ops.source)
        current = self.ops.disks()
        changes = disk_changes(prev.sizes, current) if prev is not None else []
        for c in changes:
            log.warning("%s: %s", self.name, c.describe())
        base = prev.base if prev is not None else None
        tracked = self.ops.tracks(base) if base else set()
        plans = []
        for name, size in current.items():
            reason: str | None = None
            if prev is None:
                pass  # the first point: a full pass, not a fallback
            elif base is None:
                reason = "the previous point names no platform snapshot: full pass"
            elif name not in prev.disks:
                reason = f"disk {name} is new since the previous point: full pass"
            elif prev.sizes[name] != size:
                reason = (
                    f"disk {name} was resized from {prev.sizes[name]} to {size} bytes: full pass"
                )
            elif not tracked:
                reason = (
                    f"the platform snapshot {base} of the previous point is gone "
                    "(deleted on the platform?): change tracking lost, full pass"
                )
            elif name not in tracked:
                reason = f"the platform snapshot {base} does not track disk {name}: full pass"
            plans.append(DiskPlan(name, size, prev is not None and reason is None, reason))
        return (base if tracked else None), plans, changes

    def snapshot(self, since: ChangeToken | None) -> AgentlessSnapshot:
        removed = self.ops.cleanup(self.name)
        base, plans, changes = self.plan(since)
        # made by runs whose points never committed: one may be read again, the rest go
        leftovers = [n for n in self.ops.owned(self.name) if n != base]
        session = self.ops.resume(self.name, leftovers, base, plans)
        try:
            for name in leftovers:
                if session is None or name != session.created:
                    self.ops.delete(name)
                    removed.append(name)
        except BaseException:
            if session is not None:  # the resumed snapshot stays for the next run
                _quietly(lambda: self.ops.end(session), "end the read session")
            raise
        if removed:
            log.warning("%s: removed leftovers of an earlier run: %s", self.name, removed)
        if session is None:
            session = self.ops.take(self.name, owned_name(self.name), base, plans)
        return AgentlessSnapshot(self.ops, self.name, session, changes)
