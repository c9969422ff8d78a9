"""The EC2 Query API subset the AWS source uses: form-encoded POST, XML answers in the
2016-11-15 namespace, errors as `<Response><Errors><Error>`.

DescribeInstances (paged, filters), DescribeVolumes (paged, filters), CreateSnapshots
(instance specification, tag specifications), DescribeSnapshots (filters, paged),
DeleteSnapshot, CreateTags. Shapes follow the EC2 API Reference pages of each action.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from .state import OWNER, STATE_CODES, Account, Instance, Snap, Volume

NS = "http://ec2.amazonaws.com/doc/2016-11-15/"


class Ec2Error(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def error_xml(code: str, message: str) -> bytes:
    rid = secrets.token_hex(16)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(code)}'
        f"</Code><Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{rid}</RequestID></Response>"
    ).encode()


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _x(tag: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{tag}>{escape(str(value))}</{tag}>"


def _tags(tags: dict[str, str]) -> str:
    items = "".join(f"<item>{_x('key', k)}{_x('value', v)}</item>" for k, v in tags.items())
    return f"<tagSet>{items}</tagSet>"


def _list(params: dict[str, str], prefix: str) -> list[str]:
    """`Prefix.1`, `Prefix.2`… in order."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)$")
    found = sorted((int(m.group(1)), v) for k, v in params.items() if (m := pat.match(k)))
    return [v for _, v in found]


def _filters(params: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i in range(1, 100):
        name = params.get(f"Filter.{i}.Name")
        if name is None:
            break
        out[name] = _list(params, f"Filter.{i}.Value")
    return out


def _tag_specs(params: dict[str, str], resource: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for i in range(1, 20):
        rtype = params.get(f"TagSpecification.{i}.ResourceType")
        if rtype is None:
            break
        if rtype != resource:
            raise Ec2Error(
                "InvalidParameterValue", f"'{rtype}' is not a valid taggable resource type"
            )
        for j in range(1, 51):
            key = params.get(f"TagSpecification.{i}.Tag.{j}.Key")
            if key is None:
                break
            tags[key] = params.get(f"TagSpecification.{i}.Tag.{j}.Value", "")
    return tags


def _match_tags(tags: dict[str, str], filters: dict[str, list[str]]) -> bool:
    for name, values in filters.items():
        if name.startswith("tag:") and tags.get(name[4:]) not in values:
            return False
        if name == "tag-key" and not any(k in tags for k in values):
            return False
    return True


class Pager:
    """NextToken for Describe* calls: the position, signed so a made-up token fails."""

    def __init__(self) -> None:
        self.key = secrets.token_hex(8)
        #: at most this many items per page whatever MaxResults says (EC2 may return fewer)
        self.cap = 0

    def page(
        self, items: list[Any], params: dict[str, str], lo: int, hi: int, ids_given: bool
    ) -> tuple[list[Any], str | None]:
        raw_max = params.get("MaxResults")
        token = params.get("NextToken")
        if raw_max is None and token is None:
            return items, None
        if raw_max is not None and ids_given:
            raise Ec2Error(
                "InvalidParameterCombination",
                "The parameter instancesSet cannot be used with the parameter maxResults",
            )
        size = int(raw_max) if raw_max is not None else hi
        if not lo <= size <= hi:
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ( {size} ) for parameter maxResults is invalid. "
                f"Expecting a value between {lo} and {hi}.",
            )
        start = 0
        if token:
            try:
                data = json.loads(base64.b64decode(token))
                assert data["k"] == self.key
                start = int(data["p"])
            except Exception:
                raise Ec2Error("InvalidParameterValue", "Invalid value for nextToken") from None
        end = start + (min(size, self.cap) if self.cap else size)
        nxt = None
        if end < len(items):
            nxt = base64.b64encode(json.dumps({"k": self.key, "p": end}).encode()).decode()
        return items[start:end], nxt


class Ec2Api:
    def __init__(self, account: Account) -> None:
        self.account = account
        self.pager = Pager()
        self.actions: dict[str, Callable[[dict[str, str]], str]] = {
            "DescribeInstances": self.describe_instances,
            "DescribeVolumes": self.describe_volumes,
            "CreateSnapshots": self.create_snapshots,
            "DescribeSnapshots": self.describe_snapshots,
            "DeleteSnapshot": self.delete_snapshot,
            "CreateTags": self.create_tags,
        }

    def handle(self, params: dict[str, str]) -> bytes:
        action = params.get("Action", "")
        fn = self.actions.get(action)
        if fn is None:
            raise Ec2Error(
                "InvalidAction", f"The action {action} is not valid for this web service."
            )
        body = fn(params)
        rid = secrets.token_hex(16)
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{NS}">'
            f"<requestId>{rid}</requestId>{body}</{action}Response>"
        ).encode()

    # -- instances ----------------------------------------------------------------------
    def _instance_xml(self, inst: Instance) -> str:
        acc = self.account
        bdm = ""
        for dev, vid in inst.devices.items():
            vol = acc.volumes[vid]
            bdm += (
                f"<item>{_x('deviceName', dev)}<ebs>{_x('volumeId', vid)}{_x('status', 'attached')}"
                f"{_x('attachTime', _ts(vol.created))}{_x('deleteOnTermination', dev == inst.root_device)}"
                "</ebs></item>"
            )
        return (
            f"<item>{_x('instanceId', inst.id)}{_x('imageId', 'ami-0fake0000000000000')}"
            f"<instanceState>{_x('code', STATE_CODES[inst.state])}{_x('name', inst.state)}</instanceState>"
            f"{_x('instanceType', inst.instance_type)}{_x('launchTime', _ts(inst.launched))}"
            f"<placement>{_x('availabilityZone', inst.az)}</placement>"
            f"{_x('rootDeviceType', 'ebs')}{_x('rootDeviceName', inst.root_device)}"
            f"<blockDeviceMapping>{bdm}</blockDeviceMapping>{_x('architecture', 'x86_64')}"
            f"{_x('virtualizationType', 'hvm')}{_tags(inst.tags)}</item>"
        )

    def describe_instances(self, params: dict[str, str]) -> str:
        acc = self.account
        ids = _list(params, "InstanceId")
        flt = _filters(params)
        with acc.lock:
            insts = list(acc.instances.values())
        for i in ids:
            if i not in acc.instances:
                raise Ec2Error(
                    "InvalidInstanceID.NotFound", f"The instance ID '{i}' does not exist"
                )
        if ids:
            insts = [i for i in insts if i.id in ids]
        if "instance-id" in flt:
            insts = [i for i in insts if i.id in flt["instance-id"]]
        if "instance-state-name" in flt:
            insts = [i for i in insts if i.state in flt["instance-state-name"]]
        insts = [i for i in insts if _match_tags(i.tags, flt)]
        page, nxt = self.pager.page(insts, params, 5, 1000, bool(ids))
        res = "".join(
            f"<item>{_x('reservationId', 'r-' + i.id[2:])}{_x('ownerId', OWNER)}"
            f"<groupSet/><instancesSet>{self._instance_xml(i)}</instancesSet></item>"
            for i in page
        )
        return f"<reservationSet>{res}</reservationSet>{_x('nextToken', nxt)}"

    # -- volumes ------------------------------------------------------------------------
    def _volume_xml(self, vol: Volume) -> str:
        att = ""
        if vol.instance_id:
            att = (
                f"<item>{_x('volumeId', vol.id)}{_x('instanceId', vol.instance_id)}"
                f"{_x('device', vol.device)}{_x('status', 'attached')}"
                f"{_x('attachTime', _ts(vol.created))}{_x('deleteOnTermination', False)}</item>"
            )
        return (
            f"<item>{_x('volumeId', vol.id)}{_x('size', vol.size_gib)}{_x('snapshotId', '')}"
            f"{_x('availabilityZone', vol.az)}{_x('status', 'in-use' if vol.instance_id else 'available')}"
            f"{_x('createTime', _ts(vol.created))}<attachmentSet>{att}</attachmentSet>"
            f"{_x('volumeType', vol.volume_type)}{_x('encrypted', vol.encrypted)}"
            f"{_x('kmsKeyId', vol.kms_key_id)}{_tags(vol.tags)}</item>"
        )

    def describe_volumes(self, params: dict[str, str]) -> str:
        acc = self.account
        ids = _list(params, "VolumeId")
        flt = _filters(params)
        with acc.lock:
            vols = list(acc.volumes.values())
        for v in ids:
            if v not in acc.volumes:
                raise Ec2Error("InvalidVolume.NotFound", f"The volume '{v}' does not exist.")
        if ids:
            vols = [v for v in vols if v.id in ids]
        if "volume-id" in flt:
            vols = [v for v in vols if v.id in flt["volume-id"]]
        if "attachment.instance-id" in flt:
            vols = [v for v in vols if v.instance_id in flt["attachment.instance-id"]]
        vols = [v for v in vols if _match_tags(v.tags, flt)]
        page, nxt = self.pager.page(vols, params, 5, 500, bool(ids))
        return f"<volumeSet>{''.join(self._volume_xml(v) for v in page)}</volumeSet>{_x('nextToken', nxt)}"

    # -- snapshots ----------------------------------------------------------------------
    def _snap_xml(self, s: Snap) -> str:
        acc = self.account
        return (
            f"<item>{_x('snapshotId', s.id)}{_x('volumeId', s.volume_id)}"
            f"{_x('status', acc.state_of(s))}{_x('state', acc.state_of(s))}"
            f"{_x('startTime', _ts(s.started))}{_x('progress', f'{acc.progress_of(s)}%')}"
            f"{_x('ownerId', OWNER)}{_x('volumeSize', s.volume_size_gib)}"
            f"{_x('description', s.description)}{_x('encrypted', s.encrypted)}"
            f"{_x('kmsKeyId', s.kms_key_id)}{_x('storageTier', 'standard')}{_tags(s.tags)}</item>"
        )

    def create_snapshots(self, params: dict[str, str]) -> str:
        acc = self.account
        iid = params.get("InstanceSpecification.InstanceId")
        if not iid:
            raise Ec2Error(
                "MissingParameter", "The request must contain the parameter InstanceSpecification"
            )
        exclude_boot = params.get("InstanceSpecification.ExcludeBootVolume", "false") == "true"
        excluded = set(_list(params, "InstanceSpecification.ExcludeDataVolumeId"))
        tags = _tag_specs(params, "snapshot")
        copy = params.get("CopyTagsFromSource") == "volume"
        desc = params.get("Description", "")
        with acc.lock:  # one instant for every volume of the instance
            inst = acc.instances.get(iid)
            if inst is None or inst.state == "terminated":
                raise Ec2Error(
                    "InvalidInstanceID.NotFound", f"The instance ID '{iid}' does not exist"
                )
            root = inst.devices.get(inst.root_device)
            if root in excluded:
                raise Ec2Error(
                    "InvalidParameterValue",
                    "The root volume cannot be excluded with ExcludeDataVolumeIds; use ExcludeBootVolume",
                )
            snaps = []
            for dev, vid in inst.devices.items():
                if vid in excluded or (exclude_boot and dev == inst.root_device):
                    continue
                vol = acc.volumes[vid]
                all_tags = {**(vol.tags if copy else {}), **tags}
                snaps.append(acc.snapshot_volume(vol, desc, all_tags))
        return f"<snapshotSet>{''.join(self._snap_xml(s) for s in snaps)}</snapshotSet>"

    def describe_snapshots(self, params: dict[str, str]) -> str:
        acc = self.account
        ids = _list(params, "SnapshotId")
        owners = _list(params, "Owner")
        flt = _filters(params)
        snaps = acc.live_snapshots()
        byid = {s.id: s for s in snaps}
        for i in ids:
            if i not in byid:
                raise Ec2Error("InvalidSnapshot.NotFound", f"The snapshot '{i}' does not exist.")
        if ids:
            snaps = [byid[i] for i in ids]
        if owners and not set(owners) & {"self", OWNER}:
            snaps = []
        if "volume-id" in flt:
            snaps = [s for s in snaps if s.volume_id in flt["volume-id"]]
        if "status" in flt:
            snaps = [s for s in snaps if acc.state_of(s) in flt["status"]]
        snaps = [s for s in snaps if _match_tags(s.tags, flt)]
        page, nxt = self.pager.page(snaps, params, 5, 1000, bool(ids))
        return f"<snapshotSet>{''.join(self._snap_xml(s) for s in page)}</snapshotSet>{_x('nextToken', nxt)}"

    def delete_snapshot(self, params: dict[str, str]) -> str:
        acc = self.account
        sid = params.get("SnapshotId", "")
        with acc.lock:
            snap = acc.snapshots.get(sid)
            if snap is None or snap.deleted:
                raise Ec2Error("InvalidSnapshot.NotFound", f"The snapshot '{sid}' does not exist.")
            acc.delete_snapshot(sid)
        return "<return>true</return>"

    def create_tags(self, params: dict[str, str]) -> str:
        acc = self.account
        ids = _list(params, "ResourceId")
        tags: dict[str, str] = {}
        for j in range(1, 51):
            key = params.get(f"Tag.{j}.Key")
            if key is None:
                break
            tags[key] = params.get(f"Tag.{j}.Value", "")
        with acc.lock:
            for rid in ids:
                obj: Any = acc.snapshots.get(rid) or acc.volumes.get(rid) or acc.instances.get(rid)
                if obj is None or getattr(obj, "deleted", False):
                    kind = {"snap": "InvalidSnapshot", "vol": "InvalidVolume"}.get(
                        rid.split("-")[0], "InvalidID"
                    )
                    raise Ec2Error(f"{kind}.NotFound", f"The ID '{rid}' does not exist")
                obj.tags.update(tags)
        return "<return>true</return>"
