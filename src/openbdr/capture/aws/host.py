"""Source `aws`: an EC2 instance read through EBS snapshots and the EBS direct APIs.

It runs the shared agentless flow (`capture/agentless.py`): leftovers removed → one
`CreateSnapshots` of every EBS volume of the instance (crash-consistent at one instant),
tagged as ours, waited until `completed` → per volume ListChangedBlocks(previous, current)
or, for the first point or a lost base, ListSnapshotBlocks → GetSnapshotBlock with many
requests in flight → the point commits → the previous set is deleted and the new one
kept as the next base (tagged committed). Without a commit the new set is deleted and
the old base stays. `AwsOps` is the platform side: a platform snapshot of the flow is
one *set* of EBS snapshots, named by the tag `openbdr:set`.

512 KiB EBS blocks are reported as they are: in an incremental the engine takes the
untouched half of a 1 MiB block from the previous restore point (the source contract),
so only changed halves are read. `EbsDisk.partial_blocks = False` widens changed extents
to whole 1 MiB blocks instead, for an engine that zero-fills uncovered bytes.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ...extents import Extent, from_blocks, to_blocks
from ..agentless import (
    OWNER_TAG,
    AgentlessDisk,
    AgentlessHost,
    DiskPlan,
    PlatformOps,
    Session,
    owner_tags,
)
from ..base import ChangeToken
from ..platform import PlatformError, UnknownVM
from .blocks import EBS_BLOCK, TOKEN_CAP, BlockReader, list_blocks
from .client import Aws

log = logging.getLogger(__name__)

GIB = 1 << 30
#: tags on every snapshot OpenBDR makes, besides the shared owner tag (`OWNER_TAG`)
HOST_TAG = OWNER_TAG
SET_TAG = "openbdr:set"
#: on the snapshots of a committed point: never taken for a killed run's set to resume
COMMITTED_TAG = "openbdr:committed"
INSTANCE_TAG = "openbdr:instance"


class EbsDisk(AgentlessDisk):
    """One EBS volume's snapshot of the set.

    Its extents are the EBS listing itself, streamed page by page (the block tokens it
    teaches are what the reads need): a full pass reads the platform's allocation without
    narrowing it by file systems, and an incremental lists changes only, never the whole
    snapshot (see docs/ARCHITECTURE.md, "AWS source")."""

    def __init__(
        self,
        aws: Aws,
        pool: ThreadPoolExecutor,
        plan: DiskPlan,
        volume: dict[str, Any],
        snapshot: str,
        base_snapshot: str | None,
        set_id: str,
    ) -> None:
        super().__init__("aws", plan, set_id)
        self.aws = aws
        self.volume = volume
        self.snapshot_id = snapshot
        #: the previous point's snapshot of this volume (ListChangedBlocks' first)
        self.base_snapshot = base_snapshot if plan.incremental else None
        self.valid_bytes: int | None = None
        self.reader = BlockReader(aws, snapshot, self.size // EBS_BLOCK, pool)
        #: 512 KiB blocks the listing named (changed, or present in a full pass)
        self.listed_blocks = 0

    def _listing(self, base: str | None) -> tuple[list[Extent], list[Extent], int]:
        """(blocks with data, blocks gone (TRIM), pages) of ListSnapshotBlocks or, with
        `base`, ListChangedBlocks; merged as pages come: memory follows the extents."""
        listed: list[Extent] = []
        zero: list[Extent] = []
        pages = 0
        for entries in list_blocks(self.aws, self.snapshot_id, base):
            pages += 1
            self.reader.learn(entries)
            for e in entries:
                _append(listed if e.token is not None else zero, e.index)
        return listed, zero, pages

    def allocation(self) -> tuple[list[Extent], list[Extent]]:
        data, _, _ = self._listing(None)
        return data, []  # absent blocks read as zero; nothing is known-zero in a snapshot

    def changed(self) -> list[Extent]:
        data, zero, _ = self._listing(self.base_snapshot)
        return sorted([*data, *zero])

    def extents(self) -> list[Extent]:
        if self._listed is not None:
            return self._listed
        listed, zero, pages = self._listing(self.base_snapshot)
        present = sum(e.length for e in listed) // EBS_BLOCK
        removed = sum(e.length for e in zero) // EBS_BLOCK
        if self.base_snapshot is None:
            if present < TOKEN_CAP:  # the whole snapshot is known: the rest is absent
                self.reader.learn([], 0, self.size // EBS_BLOCK)
            self.valid_bytes = present * EBS_BLOCK
        else:
            self.changed_bytes = (present + removed) * EBS_BLOCK
        self.listed_blocks = present + removed
        self._zero = zero  # gone from the volume (TRIM): recorded zero, unread
        if self.incremental and not self.partial_blocks:
            listed = from_blocks(to_blocks(listed, self.size), self.size)
        log.info(
            "%s (%s): %d blocks of 512 KiB listed (%d removed) in %d pages%s",
            self.name,
            self.snapshot_id,
            self.listed_blocks,
            removed,
            pages,
            f", changed since {self.base_snapshot}" if self.base_snapshot else "",
        )
        self._listed = listed
        self.reader.plan(listed)
        return listed

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        view = memoryview(buf)
        n = max(0, min(len(view), self.size - offset))
        if n:
            self.reader.read_into(offset, view[:n])
        return n

    @property
    def token(self) -> ChangeToken:
        return ChangeToken(
            "aws",
            {
                "base": self.base,
                "snapshot": self.snapshot_id,
                "size": self.size,
                "volume": self.name,
                "device": self.volume.get("Device"),
            },
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "snapshot": self.snapshot_id}

    def close(self) -> None:
        self.reader.close()


@dataclass
class AwsSession(Session):
    """A set being read: its snapshots by volume, and the pool of GetSnapshotBlock
    requests (ended with the session)."""

    pool: ThreadPoolExecutor | None = None
    snapshots: dict[str, str] = field(default_factory=dict)


class AwsOps(PlatformOps):
    """One instance's EBS volumes: snapshot sets taken, listed and deleted by tag."""

    source = "aws"

    def __init__(self, aws: Aws, instance_id: str, options: dict[str, Any]) -> None:
        self.aws = aws
        self.instance_id = instance_id
        self.options = options
        self.timeout = float(options.get("snapshot_timeout", 6 * 3600))
        self.poll = float(options.get("poll_interval", 2.0))
        self.resume_max_age = float(options.get("resume_max_age", 12 * 3600))
        self._vols: dict[str, dict[str, Any]] | None = None
        self._mine: list[dict[str, Any]] | None = None

    # -- EC2 -----------------------------------------------------------------------------
    def instance(self) -> dict[str, Any]:
        """The instance now; `UnknownVM` when it was deleted or terminated (the control
        plane raises its VM-missing alert on that)."""
        gone = UnknownVM(
            f"no VM {self.instance_id!r} on aws platform {self.aws.region} (terminated or deleted)",
            "remove the host, or add it again with the instance's new id",
        )
        try:
            r = self.aws.call(
                self.aws.ec2,
                "describe_instances",
                f"instance {self.instance_id}",
                InstanceIds=[self.instance_id],
            )
        except PlatformError as exc:
            if "InvalidInstanceID" in str(exc) or "does not exist" in str(exc):
                raise gone from None
            raise
        for res in r.get("Reservations", []):
            for inst in res.get("Instances", []):
                if inst["InstanceId"] == self.instance_id:
                    if inst.get("State", {}).get("Name") in ("terminated", "shutting-down"):
                        raise gone
                    return dict(inst)
        raise gone

    def volumes(self, inst: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """EBS volumes attached to the instance, root first then by device name."""
        devices = {
            m["Ebs"]["VolumeId"]: m["DeviceName"]
            for m in inst.get("BlockDeviceMappings", [])
            if "Ebs" in m
        }
        if not devices:
            return {}
        r = self.aws.call(
            self.aws.ec2,
            "describe_volumes",
            f"volumes of {self.instance_id}",
            VolumeIds=list(devices),
        )
        root = inst.get("RootDeviceName")
        vols = {v["VolumeId"]: dict(v, Device=devices[v["VolumeId"]]) for v in r.get("Volumes", [])}
        order = sorted(vols, key=lambda v: (vols[v]["Device"] != root, vols[v]["Device"]))
        return {v: vols[v] for v in order}

    def disks(self) -> dict[str, int]:
        self._vols = self.volumes(self.instance())
        if not self._vols:
            raise PlatformError(
                f"aws {self.aws.region}: instance {self.instance_id} has no EBS volume",
                "only EBS volumes can be protected without an agent",
            )
        return {vid: int(v["Size"]) * GIB for vid, v in self._vols.items()}

    # -- our snapshot sets -------------------------------------------------------------------
    def ours(self, host: str) -> list[dict[str, Any]]:
        """Snapshots OpenBDR made of this instance for `host` (any state), listed again;
        the flow's other steps read this listing (`_set`)."""
        out: list[dict[str, Any]] = []
        tag = owner_tags(host)[OWNER_TAG]
        kw: dict[str, Any] = {
            "OwnerIds": ["self"],
            "Filters": [
                {"Name": f"tag:{HOST_TAG}", "Values": [tag]},
                {"Name": f"tag:{INSTANCE_TAG}", "Values": [self.instance_id]},
            ],
            "MaxResults": 1000,
        }
        while True:
            r = self.aws.call(self.aws.ec2, "describe_snapshots", f"snapshots of {host}", **kw)
            out += r.get("Snapshots", [])
            if not r.get("NextToken"):
                break
            kw["NextToken"] = r["NextToken"]
        self._mine = out
        return out

    def owned(self, host: str) -> list[str]:
        """Our sets of this instance for `host`, oldest first (set names sort by time)."""
        if self._mine is None:
            self.ours(host)
        return sorted({n for s in self._mine or [] if (n := _tags(s).get(SET_TAG))})

    def tracks(self, snapshot: str) -> set[str]:
        """Volumes whose snapshot in set `snapshot` still exists and is completed."""
        return {s["VolumeId"] for s in self._set(snapshot) if s.get("State") == "completed"}

    def _set(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self._mine or [] if _tags(s).get(SET_TAG) == name]

    def cleanup(self, host: str) -> list[str]:
        """A run leaves nothing but snapshots, which `owned` finds: list them afresh."""
        self.ours(host)
        return []

    def delete(self, snapshot: str) -> None:
        """Delete every EBS snapshot of set `snapshot` (as OpenStack does, a snapshot that
        cannot be deleted now does not fail the sync)."""
        for s in self._set(snapshot):  # one that fails is logged: the next run tries again
            _quietly_delete(self, s["SnapshotId"])
        if self._mine is not None:
            self._mine = [s for s in self._mine if _tags(s).get(SET_TAG) != snapshot]

    def _delete_one(self, sid: str) -> None:
        try:
            self.aws.call(self.aws.ec2, "delete_snapshot", f"snapshot {sid}", SnapshotId=sid)
        except PlatformError as exc:
            if "does not exist" not in str(exc):
                raise

    def kept(self, snapshot: str) -> None:
        """The point committed: tag the set so that it is never resumed as a killed run's."""
        ids = [s["SnapshotId"] for s in self._set(snapshot)]
        if not ids:
            return
        self.aws.call(
            self.aws.ec2,
            "create_tags",
            "the new snapshots",
            Resources=ids,
            Tags=[
                {"Key": COMMITTED_TAG, "Value": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            ],
        )

    # -- a set to read ------------------------------------------------------------------------
    def resume(
        self, host: str, leftovers: list[str], base: str | None, plans: list[DiskPlan]
    ) -> AwsSession | None:
        """The newest set of a run that was killed before its point committed, when it
        covers every volume and is younger than `resume_max_age` (12 h): reading it again
        lets the engine resume from its checkpoint (same fingerprints)."""
        best: tuple[datetime, str] | None = None
        now = datetime.now(UTC)
        volumes = {p.name for p in plans}
        for name in leftovers:
            snaps = self._set(name)
            if not snaps or any(COMMITTED_TAG in _tags(s) for s in snaps):
                continue
            if {s["VolumeId"] for s in snaps} != volumes or len(snaps) != len(volumes):
                continue
            if any(s.get("State") not in ("completed", "pending") for s in snaps):
                continue
            started = min(s["StartTime"] for s in snaps)
            if (now - started).total_seconds() > self.resume_max_age:
                continue
            if best is None or started > best[0]:
                best = (started, name)
        if best is None:
            return None
        log.warning(
            "%s: reading the snapshots of an interrupted run again (%s): the sync resumes "
            "from its checkpoint",
            host,
            best[1],
        )
        return self._open(
            best[1], {s["VolumeId"]: s["SnapshotId"] for s in self._set(best[1])}, base, plans
        )

    def take(self, host: str, name: str, base: str | None, plans: list[DiskPlan]) -> AwsSession:
        """CreateSnapshots of every EBS volume of the instance as set `name`."""
        tags = [
            *({"Key": k, "Value": v} for k, v in owner_tags(host).items()),
            {"Key": INSTANCE_TAG, "Value": self.instance_id},
            {"Key": SET_TAG, "Value": name},
            {"Key": "Name", "Value": name},
        ]
        r = self.aws.call(
            self.aws.ec2,
            "create_snapshots",
            f"instance {self.instance_id}",
            InstanceSpecification={"InstanceId": self.instance_id, "ExcludeBootVolume": False},
            Description=f"OpenBDR restore point of host {host}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}],
        )
        made = {s["VolumeId"]: s["SnapshotId"] for s in r.get("Snapshots", [])}
        if self._mine is not None:
            self._mine += [{**s, "Tags": tags} for s in r.get("Snapshots", [])]
        return self._open(name, made, base, plans)

    def _open(
        self, name: str, made: dict[str, str], base: str | None, plans: list[DiskPlan]
    ) -> AwsSession:
        pool = ThreadPoolExecutor(self.aws.in_flight, thread_name_prefix="ebs")
        try:
            self._wait(list(made.values()))
            base_ids = {s["VolumeId"]: s["SnapshotId"] for s in self._set(base)} if base else {}
            disks: list[AgentlessDisk] = []
            for plan in plans:
                sid = made.get(plan.name)
                if sid is None:  # detached after the plan listed it
                    log.warning("volume %s has no snapshot in set %s: left out", plan.name, name)
                    continue
                vol = (self._vols or {}).get(plan.name, {"VolumeId": plan.name})
                disks.append(EbsDisk(self.aws, pool, plan, vol, sid, base_ids.get(plan.name), name))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for sid in made.values():
                _quietly_delete(self, sid)
            raise
        return AwsSession(disks, "crash", keep=name, created=name, pool=pool, snapshots=dict(made))

    def _wait(self, ids: list[str]) -> None:
        """Until every snapshot is `completed` (the EBS direct APIs read only those)."""
        deadline = time.monotonic() + self.timeout
        delay = min(0.2, self.poll)
        while True:
            r = self.aws.call(
                self.aws.ec2, "describe_snapshots", "the new snapshots", SnapshotIds=ids
            )
            states = {
                s["SnapshotId"]: (s.get("State"), s.get("StateMessage", "")) for s in r["Snapshots"]
            }
            failed = {k: m for k, (st, m) in states.items() if st == "error"}
            if failed:
                raise PlatformError(
                    f"aws {self.aws.region}: snapshots of {self.instance_id} failed: {failed}",
                    "check the volumes and the account's snapshot quota; run the sync again",
                )
            if all(st == "completed" for st, _ in states.values()) and len(states) == len(ids):
                return
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"aws {self.aws.region}: snapshots {ids} still pending after {self.timeout:.0f} s",
                    "raise the platform option snapshot_timeout, or retry later",
                )
            time.sleep(delay)
            delay = min(self.poll, delay * 1.5)

    def end(self, session: Session) -> None:
        if isinstance(session, AwsSession) and session.pool is not None:
            session.pool.shutdown(wait=True, cancel_futures=True)


def _quietly_delete(ops: AwsOps, sid: str) -> None:
    try:
        ops._delete_one(sid)
    except PlatformError as exc:
        log.warning("could not delete snapshot %s: %s (the next sync removes it)", sid, exc)


class AwsHost(AgentlessHost):
    """An EC2 instance protected without an agent."""

    def __init__(self, name: str, aws: Aws, instance_id: str, options: dict[str, Any]) -> None:
        self.aws = aws
        self.instance_id = instance_id
        self.options = options
        self.ops: AwsOps = AwsOps(aws, instance_id, options)
        super().__init__(name, self.ops, f"{aws.region}/{instance_id}")


def _tags(snapshot: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in snapshot.get("Tags", [])}


def _append(extents: list[Extent], index: int) -> None:
    """Add 512 KiB block `index` (in increasing order) to merged extents."""
    off = index * EBS_BLOCK
    if extents and extents[-1].end == off:
        extents[-1] = Extent(extents[-1].offset, extents[-1].length + EBS_BLOCK)
    else:
        extents.append(Extent(off, EBS_BLOCK))
