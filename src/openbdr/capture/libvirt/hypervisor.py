"""The libvirt platform: test, discovery and hosts over one libvirt connection."""

from __future__ import annotations

import contextlib
from typing import Any

import libvirt

from ..agentless import AgentlessHost
from ..platform import VM, Platform, PlatformError, VMDisk
from . import domxml
from .conn import MIN_LIBVIRT, POWER, connect, domain, failed
from .ops import LibvirtOps


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
