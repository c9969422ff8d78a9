"""Source `aws`: an EC2 instance read through EBS snapshots and the EBS direct APIs.

One sync: remove our snapshots of this host that no point names (killed runs) →
CreateSnapshots with an instance specification (every EBS volume of the instance,
crash-consistent at one instant), tagged as ours → wait until `completed` → per volume,
ListChangedBlocks(previous, current) or, for the first point (or a lost base),
ListSnapshotBlocks → GetSnapshotBlock with many requests in flight → the point commits →
the previous snapshots are deleted and the new ones kept as the next base. Without a
commit the new snapshots are deleted and the old base stays.

512 KiB EBS blocks are reported as they are: in an incremental the engine takes the
untouched half of a 1 MiB block from the previous restore point (the source contract),
so only changed halves are read. `PARTIAL_BLOCKS = False` widens changed extents to whole
1 MiB blocks instead, for an engine that zero-fills uncovered bytes.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from ...extents import Extent, from_blocks, to_blocks
from ..base import ChangeToken, DiskSnapshot, Host, Snapshot
from ..platform import PlatformError, UnknownVM
from .blocks import EBS_BLOCK, TOKEN_CAP, BlockReader, list_blocks
from .client import Aws

log = logging.getLogger(__name__)

GIB = 1 << 30
#: True: the engine fills bytes of a touched 1 MiB block outside the extents from the
#: previous point (the contract); False: changed extents are widened to whole 1 MiB blocks
PARTIAL_BLOCKS = True
#: tags on every snapshot OpenBDR makes (the first is the shared agentless owner tag)
HOST_TAG = "openbdr:host"
SET_TAG = "openbdr:set"
#: on the snapshots of a committed point: never taken for a killed run's set to resume
COMMITTED_TAG = "openbdr:committed"
INSTANCE_TAG = "openbdr:instance"


def slug(host: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-")
    return s[:40] or "host"


def set_name(host: str) -> str:
    """Name of one run's snapshot set: `openbdr-<host>-<UTC time>-<pid><random>`."""
    when = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"openbdr-{slug(host)}-{when}-{os.getpid():x}{secrets.token_hex(2)}"


class EbsDisk(DiskSnapshot):
    """One EBS volume's snapshot of the set."""

    def __init__(
        self,
        aws: Aws,
        pool: ThreadPoolExecutor,
        volume: dict[str, Any],
        snapshot: str,
        base: str | None,
        reason: str | None,
        set_id: str,
    ) -> None:
        self.aws = aws
        self.volume = volume
        self.name = str(volume["VolumeId"])
        self.size = int(volume["Size"]) * GIB
        self.snapshot_id = snapshot
        self.base = base
        self.incremental = base is not None
        self.fallback_reason = reason
        self.set_id = set_id
        self.valid_bytes: int | None = None
        self.reader = BlockReader(aws, snapshot, self.size // EBS_BLOCK, pool)
        self._listed: list[Extent] | None = None
        self._zero: list[Extent] = []
        #: 512 KiB blocks the listing named (changed, or present in a full pass)
        self.listed_blocks = 0

    def extents(self) -> list[Extent]:
        if self._listed is not None:
            return self._listed
        listed: list[Extent] = []  # merged as pages come: memory follows the extents
        zero: list[Extent] = []
        present = removed = pages = 0
        for entries in list_blocks(self.aws, self.snapshot_id, self.base):
            pages += 1
            self.reader.learn(entries)
            for e in entries:
                if e.token is not None:
                    present += 1
                    _append(listed, e.index)
                else:  # gone from the volume (TRIM): recorded zero, unread
                    removed += 1
                    _append(zero, e.index)
        nblocks = self.size // EBS_BLOCK
        if self.base is None:
            if present < TOKEN_CAP:  # the whole snapshot is known: the rest is absent
                self.reader.learn([], 0, nblocks)
            self.valid_bytes = present * EBS_BLOCK
        self.listed_blocks = present + removed
        self._zero = zero
        if self.incremental and not PARTIAL_BLOCKS:
            listed = from_blocks(to_blocks(listed, self.size), self.size)
        log.info(
            "%s (%s): %d blocks of 512 KiB listed (%d removed) in %d pages%s",
            self.name,
            self.snapshot_id,
            self.listed_blocks,
            removed,
            pages,
            f", changed since {self.base}" if self.base else "",
        )
        self._listed = listed
        self.reader.plan(listed)
        return listed

    def zero_extents(self) -> list[Extent]:
        if self._listed is None:
            self.extents()
        return self._zero

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
                "base": self.set_id,
                "snapshot": self.snapshot_id,
                "size": self.size,
                "volume": self.name,
                "device": self.volume.get("Device"),
            },
        )

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "snapshot": self.snapshot_id}


class AwsSnapshot(Snapshot):
    def __init__(
        self,
        host: AwsHost,
        disks: list[EbsDisk],
        created: list[str],
        previous: list[str],
        pool: ThreadPoolExecutor,
    ) -> None:
        self.host = host
        self.disks: list[DiskSnapshot] = list(disks)
        self.consistency = "crash"
        self.created = created
        self.previous = previous
        self.pool = pool
        self._committed = False
        self._released = False

    def committed(self) -> None:
        """The point exists: the new snapshots are the next base, the previous go."""
        self._committed = True
        try:
            self.host.aws.call(
                self.host.aws.ec2,
                "create_tags",
                "the new snapshots",
                Resources=list(self.created),
                Tags=[
                    {
                        "Key": COMMITTED_TAG,
                        "Value": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                ],
            )
        except PlatformError as exc:  # a later --full sync may then read them again
            log.warning("could not tag the committed snapshots: %s", exc)
        for sid in self.previous:
            if sid not in self.created:
                self.host.delete_quietly(sid)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        for d in self.disks:
            assert isinstance(d, EbsDisk)
            d.reader.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if not self._committed:
            for sid in self.created:
                self.host.delete_quietly(sid)


class AwsHost(Host):
    """An EC2 instance protected without an agent."""

    def __init__(self, name: str, aws: Aws, instance_id: str, options: dict[str, Any]) -> None:
        self.name = name
        self.aws = aws
        self.instance_id = instance_id
        self.options = options
        self.timeout = float(options.get("snapshot_timeout", 6 * 3600))
        self.poll = float(options.get("poll_interval", 2.0))

    def describe(self) -> str:
        return f"aws:{self.aws.region}/{self.instance_id}"

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

    def ours(self) -> list[dict[str, Any]]:
        """Snapshots OpenBDR made of this instance for this host (any state)."""
        out: list[dict[str, Any]] = []
        kw: dict[str, Any] = {
            "OwnerIds": ["self"],
            "Filters": [
                {"Name": f"tag:{HOST_TAG}", "Values": [slug(self.name)]},
                {"Name": f"tag:{INSTANCE_TAG}", "Values": [self.instance_id]},
            ],
            "MaxResults": 1000,
        }
        while True:
            r = self.aws.call(self.aws.ec2, "describe_snapshots", f"snapshots of {self.name}", **kw)
            out += r.get("Snapshots", [])
            if not r.get("NextToken"):
                return out
            kw["NextToken"] = r["NextToken"]

    def delete_quietly(self, sid: str) -> None:
        try:
            self.aws.call(self.aws.ec2, "delete_snapshot", f"snapshot {sid}", SnapshotId=sid)
        except PlatformError as exc:
            if "does not exist" in str(exc):
                return
            log.warning("could not delete snapshot %s: %s (the next sync removes it)", sid, exc)

    def _create(self, set_id: str) -> dict[str, str]:
        """CreateSnapshots of every EBS volume of the instance: volume id -> snapshot id."""
        tags = [
            {"Key": HOST_TAG, "Value": slug(self.name)},
            {"Key": INSTANCE_TAG, "Value": self.instance_id},
            {"Key": SET_TAG, "Value": set_id},
            {"Key": "Name", "Value": set_id},
        ]
        r = self.aws.call(
            self.aws.ec2,
            "create_snapshots",
            f"instance {self.instance_id}",
            InstanceSpecification={"InstanceId": self.instance_id, "ExcludeBootVolume": False},
            Description=f"OpenBDR restore point of host {self.name}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}],
        )
        return {s["VolumeId"]: s["SnapshotId"] for s in r.get("Snapshots", [])}

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

    # -- the flow -------------------------------------------------------------------------
    def snapshot(self, since: ChangeToken | None) -> AwsSnapshot:
        prev = _previous(since)
        inst = self.instance()
        vols = self.volumes(inst)
        if not vols:
            raise PlatformError(
                f"aws {self.aws.region}: instance {self.instance_id} has no EBS volume",
                "only EBS volumes can be protected without an agent",
            )
        keep = {p["snapshot"] for p in prev.values()} if prev else set()
        mine = self.ours()
        existing = {s["SnapshotId"] for s in mine if s.get("State") == "completed"}
        resumed = self._interrupted(mine, keep, set(vols))
        leftovers = [
            s["SnapshotId"]
            for s in mine
            if s["SnapshotId"] not in keep and s["SnapshotId"] not in (resumed or {}).values()
        ]
        for sid in leftovers:
            self.delete_quietly(sid)
        if leftovers:
            log.warning(
                "%s: removed our snapshots that the previous point does not name "
                "(runs that never committed, or a --full sync): %s",
                self.name,
                leftovers,
            )
        if resumed is not None:
            set_id, created = _set_of(mine, resumed), resumed
            log.warning(
                "%s: reading the snapshots of an interrupted run again (%s): the sync "
                "resumes from its checkpoint",
                self.name,
                set_id,
            )
        else:
            set_id = set_name(self.name)
            created = self._create(set_id)
        pool = ThreadPoolExecutor(self.aws.in_flight, thread_name_prefix="ebs")
        try:
            self._wait(list(created.values()))
            disks: list[EbsDisk] = []
            for vid, vol in vols.items():
                sid = created.get(vid)
                if sid is None:  # attached after CreateSnapshots listed the volumes
                    continue
                base, reason = self._base(since, prev, vid, int(vol["Size"]) * GIB, existing)
                disks.append(EbsDisk(self.aws, pool, vol, sid, base, reason, set_id))
                if reason:
                    log.warning("%s: %s", vid, reason)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for sid in created.values():
                self.delete_quietly(sid)
            raise
        return AwsSnapshot(self, disks, list(created.values()), sorted(keep), pool)

    def _interrupted(
        self, mine: list[dict[str, Any]], keep: set[str], volumes: set[str]
    ) -> dict[str, str] | None:
        """The newest snapshot set of a run that was killed before its point committed,
        when it still covers every volume and is recent enough (`resume_max_age`, 12 h):
        reading it again lets the engine resume from its checkpoint (same fingerprint)."""
        max_age = float(self.options.get("resume_max_age", 12 * 3600))
        sets: dict[str, list[dict[str, Any]]] = {}
        for s in mine:
            tags = _tags(s)
            tag = tags.get(SET_TAG)
            if tag and s["SnapshotId"] not in keep and COMMITTED_TAG not in tags:
                sets.setdefault(tag, []).append(s)
        best: tuple[datetime, dict[str, str]] | None = None
        now = datetime.now(UTC)
        for snaps in sets.values():
            if {s["VolumeId"] for s in snaps} != volumes or len(snaps) != len(volumes):
                continue
            if any(s.get("State") not in ("completed", "pending") for s in snaps):
                continue
            started = min(s["StartTime"] for s in snaps)
            if (now - started).total_seconds() > max_age:
                continue
            if best is None or started > best[0]:
                best = (started, {s["VolumeId"]: s["SnapshotId"] for s in snaps})
        return best[1] if best else None

    def _base(
        self,
        since: ChangeToken | None,
        prev: dict[str, dict[str, Any]] | None,
        vid: str,
        size: int,
        existing: set[str],
    ) -> tuple[str | None, str | None]:
        """(base snapshot of the volume's change list, why there is none)."""
        if since is None:
            return None, None
        if prev is None:
            return (
                None,
                f"the previous point was not read from EBS snapshots ({since.source}): full pass",
            )
        p = prev.get(vid)
        if p is None:
            return None, f"volume {vid} was attached after the previous point: full pass"
        if p["snapshot"] not in existing:
            return None, (
                f"the base snapshot {p['snapshot']} of volume {vid} no longer exists "
                "(deleted outside OpenBDR?): change tracking lost, full pass"
            )
        if int(p.get("size", size)) != size:
            return None, f"volume {vid} was resized from {p.get('size')} to {size} bytes: full pass"
        return str(p["snapshot"]), None


def _tags(snapshot: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in snapshot.get("Tags", [])}


def _set_of(mine: list[dict[str, Any]], chosen: dict[str, str]) -> str:
    sid = next(iter(chosen.values()))
    return next(_tags(s).get(SET_TAG, "") for s in mine if s["SnapshotId"] == sid)


def _append(extents: list[Extent], index: int) -> None:
    """Add 512 KiB block `index` (in increasing order) to merged extents."""
    off = index * EBS_BLOCK
    if extents and extents[-1].end == off:
        extents[-1] = Extent(extents[-1].offset, extents[-1].length + EBS_BLOCK)
    else:
        extents.append(Extent(off, EBS_BLOCK))


def _previous(since: ChangeToken | None) -> dict[str, dict[str, Any]] | None:
    """Per volume, what the previous point's token says (`sync.snap_token` nests it)."""
    if since is None or since.source != "aws":
        return None
    out: dict[str, dict[str, Any]] = {}
    for name, tok in since.value.items():
        value = tok.get("value") if isinstance(tok, dict) else None
        if isinstance(value, dict) and value.get("snapshot"):
            out[str(name)] = value
    return out
