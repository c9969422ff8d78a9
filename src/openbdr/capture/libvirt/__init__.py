"""Platform and source type `libvirt`: KVM/QEMU domains through libvirt, agentless.

The endpoint is a libvirt URI (`qemu:///system`, `qemu+unix:///system?socket=…`,
`qemu+ssh://root@kvm1/system`); credentials, when given, are a SASL username and
password. Snapshots are checkpoints with pull-mode backups read over NBD (`ops`), the
flow around them is the one every agentless source shares (`capture.agentless`). The
NBD export is a unix socket on the hypervisor: the sync proxy runs there.
"""

from __future__ import annotations

from typing import Any

from ...errors import SourceError
from ..agentless import AgentlessHost
from ..platform import Platform, PlatformError, PlatformType, open_platform, register_platform
from ..registry import SourceType, register_source

#: where backup scratch files and NBD sockets go unless the option says otherwise
DEFAULT_SCRATCH = "/var/tmp/openbdr-libvirt"


def _platform(endpoint: str, credentials: dict[str, Any], options: dict[str, Any]) -> Platform:
    """The SDKs are imported only here: without them the other source and platform
    types still load, and this one says what to install."""
    try:
        from .hypervisor import LibvirtPlatform
    except ImportError as exc:
        raise PlatformError(
            f"the libvirt platform needs libvirt-python and libnbd ({exc})",
            "install python3-libvirt and python3-libnbd (scripts/setup)",
        ) from None
    return LibvirtPlatform(endpoint, credentials, options)


OPTIONS = {
    "scratch_dir": f"directory for backup scratch files and NBD sockets (default {DEFAULT_SCRATCH})",
    "in_flight": "NBD read requests (up to 4 MiB each) in flight per connection (default 4)",
    "connections": "NBD connections reading each disk (default 4)",
    "quiesce": "auto (freeze through the guest agent when present), never, required",
}

register_platform(
    PlatformType(
        "libvirt",
        _platform,
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
