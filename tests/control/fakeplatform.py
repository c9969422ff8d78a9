"""Platform type `fakevirt` for the control-plane tests (an `OPENBDR_PLUGINS` module).

The real platforms are built elsewhere; this one stands in for any of them behind the
platform contract: its endpoint is `file://DIR`, where `DIR/platform.json` lists the
accepted credentials and the VMs, each VM's disks being image files read through
`capture/image.py` (real bytes). A missing directory is an unreachable endpoint; other
credentials are refused; a VM not in the file is unknown.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from openbdr.capture.base import ChangeToken
from openbdr.capture.image import ImageHost, ImageSnapshot
from openbdr.capture.platform import (
    VM,
    Platform,
    PlatformError,
    PlatformType,
    VMDisk,
    open_platform,
    register_platform,
)
from openbdr.capture.registry import SourceType, register_source
from openbdr.errors import SourceError

NAME = "fakevirt"


class FakeVMHost(ImageHost):
    """A VM's disk images, each named as the VM names it (so history follows the disk)."""

    def __init__(self, name: str, disks: list[tuple[str, str]]) -> None:
        super().__init__(name, [path for _, path in disks], valid_only=False)
        self.names = [n for n, _ in disks]

    def snapshot(self, since: ChangeToken | None) -> ImageSnapshot:
        snap = super().snapshot(since)
        for disk, name in zip(snap.disks, self.names, strict=True):
            disk.name = name
        return snap


class FakePlatform(Platform):
    type = NAME

    def __init__(self, endpoint: str, credentials: dict[str, Any], options: dict[str, Any]):
        self.endpoint = endpoint
        self.dir = Path(endpoint.removeprefix("file://"))
        try:
            self.doc = json.loads((self.dir / "platform.json").read_text())
        except FileNotFoundError:
            raise PlatformError(f"cannot reach {NAME} platform at {endpoint}: no such endpoint",
                                "check the endpoint, and that the proxy can reach it") from None
        want = self.doc.get("credentials") or {}
        if credentials.get("user") != want.get("user") or \
                credentials.get("password") != want.get("password"):
            raise PlatformError(
                f"{NAME} platform at {endpoint} refused the credentials of user "
                f"{credentials.get('user')!r}", "check the user name and password")

    def test(self) -> str:
        return f"{NAME} at {self.endpoint}: {len(self.doc.get('vms', []))} VM(s), pid {os.getpid()}"

    def discover(self) -> list[VM]:
        out = []
        for vm in self.doc.get("vms", []):
            disks = tuple(
                VMDisk(d["name"], os.stat(d["path"]).st_size, d.get("bus", "virtio"), d["path"],
                       d.get("format", "raw"), d.get("unsupported"))
                for d in vm["disks"]
            )
            out.append(VM(vm["id"], vm["name"], vm.get("power_state", "running"), disks))
        return out

    def open_host(self, host: str, vm: str, options: dict[str, Any]) -> FakeVMHost:
        found = self.vm(vm)
        return FakeVMHost(host, [(d.name, d.backing) for d in found.disks])


def _validate(spec: dict[str, Any]) -> None:
    if not spec.get("vm"):
        raise SourceError(f"source type {NAME} needs `vm`")


def _open(host: str, spec: dict[str, Any]) -> FakeVMHost:
    _validate(spec)
    conn = spec.get("platform") or {}
    platform = open_platform(NAME, conn.get("endpoint", ""), conn.get("credentials") or {},
                             conn.get("options") or {})
    result = platform.open_host(host, str(spec["vm"]), conn.get("options") or {})
    assert isinstance(result, FakeVMHost)
    return result


register_platform(PlatformType(NAME, FakePlatform, "test platform: VMs of disk image files",
                               {"user": "user name", "password": "password"}, {}))
register_source(SourceType(NAME, _open, _validate, "a VM of a fakevirt platform", {"vm": "VM id"}))


def write_platform(top: Path, vms: list[dict[str, Any]], user: str = "root",
                   password: str = "S3cret-pw") -> str:
    """Write `top/platform.json`; returns the endpoint."""
    top.mkdir(parents=True, exist_ok=True)
    (top / "platform.json").write_text(json.dumps(
        {"credentials": {"user": user, "password": password}, "vms": vms}))
    return f"file://{top}"
