"""Platform `aws`: one account and region. Discovery lists instances (paged) with their
EBS volumes, root device, tags and state; an instance opens as an `AwsHost`."""

from __future__ import annotations

from typing import Any

from ..platform import VM, Platform, VMDisk
from .client import Aws
from .host import GIB, AwsHost


class AwsPlatform(Platform):
    type = "aws"

    def __init__(self, endpoint: str, credentials: dict[str, Any], options: dict[str, Any]) -> None:
        region, _, url = endpoint.partition("@")  # "eu-west-1" or "eu-west-1@https://…"
        opts = dict(options)
        if url and not opts.get("endpoint_url"):
            opts["endpoint_url"] = url
        self.endpoint = endpoint
        self.aws = Aws(region.strip(), credentials, opts)

    def test(self) -> str:
        r = self.aws.call(self.aws.ec2, "describe_instances", "instances", MaxResults=5)
        n = sum(len(res.get("Instances", [])) for res in r.get("Reservations", []))
        more = "+" if r.get("NextToken") else ""
        return f"aws {self.aws.region}: reachable, {n}{more} instances visible"

    def _instances(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        kw: dict[str, Any] = {"MaxResults": 1000}
        while True:
            r = self.aws.call(self.aws.ec2, "describe_instances", "instances", **kw)
            for res in r.get("Reservations", []):
                out += res.get("Instances", [])
            if not r.get("NextToken"):
                return out
            kw["NextToken"] = r["NextToken"]

    def _volumes(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for k in range(0, len(ids), 200):
            kw: dict[str, Any] = {
                "Filters": [{"Name": "volume-id", "Values": ids[k : k + 200]}],
                "MaxResults": 500,
            }
            while True:
                r = self.aws.call(self.aws.ec2, "describe_volumes", "volumes", **kw)
                out.update({v["VolumeId"]: v for v in r.get("Volumes", [])})
                if not r.get("NextToken"):
                    break
                kw["NextToken"] = r["NextToken"]
        return out

    def discover(self) -> list[VM]:
        insts = [i for i in self._instances() if i.get("State", {}).get("Name") != "terminated"]
        vol_ids = [
            m["Ebs"]["VolumeId"]
            for i in insts
            for m in i.get("BlockDeviceMappings", [])
            if "Ebs" in m
        ]
        vols = self._volumes(vol_ids) if vol_ids else {}
        out = []
        for inst in insts:
            tags = {t["Key"]: t.get("Value", "") for t in inst.get("Tags", [])}
            root = inst.get("RootDeviceName")
            maps = sorted(
                (m for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m),
                key=lambda m: (m["DeviceName"] != root, m["DeviceName"]),
            )
            disks = []
            for m in maps:
                vid = m["Ebs"]["VolumeId"]
                v = vols.get(vid, {})
                disks.append(
                    VMDisk(
                        name=vid,
                        size=int(v.get("Size", 0)) * GIB,
                        bus=m["DeviceName"] + (" (root)" if m["DeviceName"] == root else ""),
                        backing=vid,
                        format="ebs-"
                        + str(v.get("VolumeType", ""))
                        + (" encrypted" if v.get("Encrypted") else ""),
                        unsupported=None
                        if v
                        else f"volume {vid} is not visible to these credentials",
                    )
                )
            out.append(
                VM(
                    id=inst["InstanceId"],
                    name=tags.get("Name") or inst["InstanceId"],
                    power_state=inst.get("State", {}).get("Name", "unknown"),
                    disks=tuple(disks),
                    tags=tags,
                )
            )
        return out

    def open_host(self, host: str, vm: str, options: dict[str, Any]) -> AwsHost:
        instance = vm if vm.startswith("i-") else self.vm(vm).id
        return AwsHost(host, self.aws, instance, {**self.aws.options, **options})
