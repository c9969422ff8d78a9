"""The platform contract of agentless sources (DESIGN.md §1, §4).

A platform is an endpoint of one type (libvirt, openstack, aws, vmware, oci,
fusioncompute) with credentials. Through it the control plane discovers VMs, and a sync
proxy opens one VM as a `Host` whose snapshots are platform snapshots of all its disks.
Each platform type lives in its own module under `capture/` and registers itself here
and, for its hosts, as a source type of the same name (`capture.registry`), whose spec is
`{"type": NAME, "platform": {"endpoint", "credentials", "options"}, "vm": ID}`.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import OpenBDRError
from .base import Host

#: modules that register platform types when imported
BUILTIN: list[str] = ["openbdr.capture.libvirt", "openbdr.capture.aws", "openbdr.capture.openstack"]


class PlatformError(OpenBDRError):
    """The platform is unreachable, refuses the credentials, or cannot do what was asked."""


class UnknownVM(PlatformError):
    """No VM of that id or name on the platform."""


@dataclass(frozen=True)
class VMDisk:
    #: stable name of the disk within the VM (target dev `vda`, volume id, …): the
    #: restore point's disk name, so that a disk keeps its history across syncs
    name: str
    size: int
    bus: str = ""
    #: where the platform keeps it (a path, `pool/image`, a volume id)
    backing: str = ""
    format: str = ""
    #: why this disk cannot be protected (None: it can)
    unsupported: str | None = None


@dataclass(frozen=True)
class VM:
    id: str
    name: str
    power_state: str
    disks: tuple[VMDisk, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Platform(abc.ABC):
    """An open connection to one platform endpoint."""

    type: str
    endpoint: str

    @abc.abstractmethod
    def test(self) -> str:
        """Reach the endpoint and check the credentials; one line describing what answered.
        Raises `PlatformError` with what failed and what to do."""

    @abc.abstractmethod
    def discover(self) -> list[VM]:
        """Every VM or instance the credentials can see, with its disks."""

    def vm(self, ref: str) -> VM:
        """A VM by platform id or by name (a name must be unique)."""
        vms = self.discover()
        by_id = [v for v in vms if v.id == ref]
        by_name = [v for v in vms if v.name == ref]
        if by_id:
            return by_id[0]
        if len(by_name) == 1:
            return by_name[0]
        if by_name:
            raise UnknownVM(
                f"{len(by_name)} VMs are named {ref!r} on {self.type} platform {self.endpoint}",
                "name the VM by its id",
            )
        raise UnknownVM(
            f"no VM {ref!r} on {self.type} platform {self.endpoint}",
            "run `openbdr platform discover` to list them",
        )

    @abc.abstractmethod
    def open_host(self, host: str, vm: str, options: dict[str, Any]) -> Host:
        """The VM as a protected host named `host` (agentless: nothing runs in the VM)."""

    def close(self) -> None:  # noqa: B027 - platforms without a connection hold nothing
        """Release connections."""


@dataclass
class PlatformType:
    name: str
    open: Callable[[str, dict[str, Any], dict[str, Any]], Platform]
    description: str = ""
    #: credential fields (sealed in the catalog, never returned by the API)
    credentials: dict[str, str] = field(default_factory=dict)
    #: non-secret options
    options: dict[str, str] = field(default_factory=dict)


PLATFORMS: dict[str, PlatformType] = {}


def register_platform(ptype: PlatformType) -> None:
    PLATFORMS[ptype.name] = ptype


def platform_type(name: str) -> PlatformType:
    own = f"{__package__}.{name}"  # only the type's own module when it is named after it
    if name not in PLATFORMS and own in BUILTIN:
        importlib.import_module(own)
    for module in BUILTIN if name not in PLATFORMS else ():
        importlib.import_module(module)
    try:
        return PLATFORMS[name]
    except KeyError:
        raise PlatformError(
            f"unknown platform type {name!r}",
            f"use one of: {', '.join(sorted(PLATFORMS)) or '(none installed)'}",
        ) from None


def open_platform(
    name: str, endpoint: str, credentials: dict[str, Any], options: dict[str, Any] | None = None
) -> Platform:
    return platform_type(name).open(endpoint, credentials, options or {})
