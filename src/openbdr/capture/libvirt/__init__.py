"""Platform and source type `libvirt`: KVM/QEMU domains through libvirt, agentless.

The endpoint is a libvirt URI (`qemu:///system`, `qemu+unix:///system?socket=…`,
`qemu+ssh://root@kvm1/system`); credentials, when given, are a SASL username and
password. Snapshots are checkpoints with pull-mode backups read over NBD (`ops`), the
flow around them is the one every agentless source shares (`capture.agentless`). The
NBD export is a unix socket on the hypervisor: the sync proxy runs there.
"""

from __future__ import annotations

import contextlib
from typing import Any

import libvirt

from ...errors import SourceError
from ..agentless import AgentlessHost
from ..platform import (
    VM,
    Platform,
    PlatformError,
    PlatformType,
    VMDisk,
    open_platform,
    register_platform,
)
from ..registry import SourceType, register_source
from . import domxml
from .conn import MIN_LIBVIRT, POWER, connect, domain, failed
from .ops import DEFAULT_SCRATCH, LibvirtOps


def _version(n: int) -> str:
    return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"


class LibvirtPlatform(Platform):
    type = "libvirt"

    def __init__(self, endpoint: str, credentials: dict[str, Any], options: dict[str, Any]) -> None:
        if not endpoint:
            raise PlatformError(
                "libvirt platform needs an endpoint: a libvirt URI",
                "e.g. qemu:///system or qemu+ssh://root@kvm1/system",
            )
        self.endpoint = endpoint
        self.options = dict(options)
        self.conn = connect(endpoint, credentials)

    def test(self) -> str:
        try:
            lib = self.conn.getLibVersion()
            hv = self.conn.getVersion()
            host = self.conn.getHostname()
            n = len(self.conn.listAllDomains(0))
        except libvirt.libvirtError as exc:
            raise failed(exc, "answer", self.endpoint) from None
        if lib < MIN_LIBVIRT:
            raise PlatformError(
                f"libvirt at {self.endpoint} is {_version(lib)}: checkpoints and pull-mode "
                f"backups need libvirt >= {_version(MIN_LIBVIRT)}",
                "upgrade libvirt on the hypervisor",
            )
        return f"libvirt {_version(lib)} on {host} (QEMU {_version(hv)}), {n} domain(s)"

    def _vm(self, dom: libvirt.virDomain) -> VM:
        xml = dom.XMLDesc(0)
        disks = []
        for d in domxml.disks(xml):
            try:
                size = int(dom.blockInfo(d.target)[0])
            except libvirt.libvirtError:
                size = 0
            disks.append(VMDisk(d.target, size, d.bus, d.source, d.format, d.unsupported()))
        return VM(
            id=dom.UUIDString(),
            name=dom.name(),
            power_state=POWER.get(dom.state()[0], "unknown"),
            disks=tuple(disks),
            tags={"guest_agent": "yes" if domxml.has_guest_agent(xml) else "no"},
        )

    def discover(self) -> list[VM]:
        try:
            return sorted((self._vm(d) for d in self.conn.listAllDomains(0)), key=lambda v: v.name)
        except libvirt.libvirtError as exc:
            raise failed(exc, "list domains", self.endpoint) from None

    def vm(self, ref: str) -> VM:
        try:
            return self._vm(domain(self.conn, self.endpoint, ref))
        except libvirt.libvirtError as exc:
            raise failed(exc, f"describe VM {ref!r}", self.endpoint) from None

    def open_host(self, host: str, vm: str, options: dict[str, Any]) -> AgentlessHost:
        dom = domain(self.conn, self.endpoint, vm)
        ops = LibvirtOps(self.conn, self.endpoint, dom, {**self.options, **options})
        return AgentlessHost(host, ops, f"{self.endpoint}#{dom.name()}")

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()


OPTIONS = {
    "scratch_dir": f"directory for backup scratch files and NBD sockets (default {DEFAULT_SCRATCH})",
    "in_flight": "NBD read requests in flight per disk (default 16)",
    "quiesce": "auto (freeze through the guest agent when present), never, required",
}

register_platform(
    PlatformType(
        "libvirt",
        LibvirtPlatform,
        "KVM/QEMU hypervisors through libvirt (checkpoints, pull-mode backups over NBD)",
        credentials={
            "username": "SASL user name (optional)",
            "password": "SASL password (optional)",
        },
        options=OPTIONS,
    )
)


def _validate(spec: dict[str, Any]) -> None:
    plat = spec.get("platform")
    if not isinstance(plat, dict) or not plat.get("endpoint") or not spec.get("vm"):
        raise SourceError(
            "source type libvirt needs `platform` (with `endpoint`, a libvirt URI) and `vm`",
            'e.g. {"type": "libvirt", "platform": {"endpoint": "qemu:///system"}, "vm": "web1"}',
        )


def _open(host: str, spec: dict[str, Any]) -> AgentlessHost:
    _validate(spec)
    plat = spec["platform"]
    p = open_platform(
        "libvirt",
        str(plat["endpoint"]),
        dict(plat.get("credentials") or {}),
        dict(plat.get("options") or {}),
    )
    return p.open_host(host, str(spec["vm"]), dict(spec.get("options") or {}))  # type: ignore[return-value]


def _parse(arg: str) -> dict[str, Any]:
    vm, sep, uri = arg.partition("@")
    if not sep or not vm or not uri:
        raise SourceError(
            f"source libvirt:{arg} is not of the form libvirt:VM@URI",
            "e.g. libvirt:web1@qemu:///system",
        )
    return {"type": "libvirt", "platform": {"endpoint": uri}, "vm": vm}


register_source(
    SourceType(
        "libvirt",
        _open,
        _validate,
        "a KVM/QEMU domain through libvirt, agentless (checkpoints and pull-mode backups)",
        {
            "platform": "endpoint (libvirt URI), credentials, options",
            "vm": "domain UUID or name",
            "options": "per-host options",
        },
        parse=_parse,
    )
)
