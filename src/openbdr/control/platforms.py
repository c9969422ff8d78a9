"""Platforms in the catalog: where their credentials go, where their jobs run, and what
a sync learns about a VM (it vanished, gained, lost or resized a disk).

A platform's credentials are sealed in the catalog and opened only into the job spec a
worker or sync proxy leases: a host's `source` row holds `{"type", "vm"}` and the job
spec gets `{"type", "platform": {"endpoint", "credentials", "options"}, "vm"}`
(`capture.platform`'s source spec). Jobs of a platform's hosts, and its test and
discovery jobs, go to the platform's proxy pool (None: the server's embedded workers).
"""

from __future__ import annotations

import importlib
import logging
import re
from typing import Any

from sqlalchemy.orm import Session

from ..capture import platform as capture_platform
from ..errors import OpenBDRError
from . import alerts
from .crypto import SecretBox
from .models import Host, Job, Platform

log = logging.getLogger(__name__)

#: alerts an operator must act on
VM_MISSING = "vm_missing"
VM_DISKS_CHANGED = "vm_disks_changed"


class VMNotFound(OpenBDRError):
    """A VM reference that matches no VM (or several) of a platform's discovery."""


def platform_types() -> dict[str, capture_platform.PlatformType]:
    """Every installed platform type (the built-in modules and the plug-ins' ones)."""
    for module in capture_platform.BUILTIN:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # its SDK is not installed here: the others still show
            log.warning("platform module %s cannot be imported: %s", module, exc)
    return dict(capture_platform.PLATFORMS)


def connection(p: Platform, box: SecretBox) -> dict[str, Any]:
    """The platform part of a source spec, credentials opened (job specs only)."""
    return {"endpoint": p.endpoint, "credentials": box.open(p.credentials),
            "options": dict(p.options or {})}


def host_source(s: Session, host: Host, box: SecretBox) -> dict[str, Any]:
    """A host's source spec as a worker needs it."""
    if host.platform_id is None:
        return dict(host.source)
    p = s.get_one(Platform, host.platform_id)
    return {**host.source, "type": p.type, "platform": connection(p, box), "vm": host.vm}


def host_pool(s: Session, host: Host) -> str | None:
    """Where a host's jobs run: its platform's proxies, else its own pool."""
    if host.platform_id is None:
        return host.pool
    return s.get_one(Platform, host.platform_id).pool


def job_platform(s: Session, job: Job, box: SecretBox) -> dict[str, Any] | None:
    """The platform of a platform job (`params.platform_id`), credentials opened."""
    pid = (job.params or {}).get("platform_id")
    p = s.get(Platform, int(pid)) if isinstance(pid, int) else None
    if p is None:
        return None
    return {"name": p.name, "type": p.type, **connection(p, box)}


def find_vm(vms: list[dict[str, Any]], ref: str, platform: str) -> dict[str, Any] | None:
    """A discovered VM by id, or by name when only one VM has it (None: not there)."""
    for vm in vms:
        if vm.get("id") == ref:
            return vm
    named = [vm for vm in vms if vm.get("name") == ref]
    if len(named) > 1:
        raise VMNotFound(f"{len(named)} VMs are named {ref!r} on platform {platform}",
                         "name the VM by its id (`openbdr platform discover` lists them)")
    return named[0] if named else None


def host_name_for(vm: dict[str, Any]) -> str:
    """A valid host name from a VM's name (the console's bulk protection)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(vm.get("name") or vm.get("id"))).strip("-._")
    return (name or "vm")[:128]


def unsupported(vm: dict[str, Any]) -> list[str]:
    """Why some of a VM's disks cannot be protected (empty: all can)."""
    return [f"disk {d.get('name')}: {d['unsupported']}" for d in vm.get("disks") or []
            if d.get("unsupported")]


# -- what a sync tells about the VM ------------------------------------------------------
def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def disk_changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """Disks added, removed or resized between a host's last sync and this one."""
    old = {str(d["name"]): int(d.get("size", 0)) for d in before}
    new = {str(d["name"]): int(d.get("size", 0)) for d in after}
    out = [f"disk {n} added ({_gib(new[n])}, copied in full)" for n in new if n not in old]
    out += [f"disk {n} removed (kept in the older restore points)" for n in old if n not in new]
    out += [f"disk {n} {'grew' if new[n] > old[n] else 'shrank'} from {_gib(old[n])} to "
            f"{_gib(new[n])}" for n in new if n in old and new[n] != old[n]]
    return out


def sync_succeeded(s: Session, host: Host, job: Job, point: dict[str, Any]) -> None:
    """Before the point is mirrored (it replaces `host.disks`): a platform host whose VM
    changed its disks gets an alert; a VM seen again resolves `vm_missing`."""
    if host.platform_id is None:
        return
    alerts.resolve(s, VM_MISSING, host.id)
    if not host.disks:
        return  # the first sync: nothing to compare with
    changes = disk_changes(host.disks, point.get("disks") or [])
    if changes:
        p = s.get_one(Platform, host.platform_id)
        alerts.open_alert(
            s, VM_DISKS_CHANGED,
            f"host {host.name}: VM {host.vm} on platform {p.name} changed its disks: "
            + "; ".join(changes) + " — check the protection covers what it should, then "
            "acknowledge this alert",
            host_id=host.id, job_id=job.id, severity="warning",
        )


def sync_failed(s: Session, job: Job, error: str) -> None:
    """A sync that found no such VM: the VM was deleted or re-created under a new id."""
    host = s.get(Host, job.host_id) if job.host_id else None
    if host is None or host.platform_id is None:
        return
    if "UnknownVM" not in (job.result or {}).get("error_types", []):
        return
    p = s.get_one(Platform, host.platform_id)
    alerts.open_alert(
        s, VM_MISSING,
        f"host {host.name}: VM {host.vm} no longer exists on {p.type} platform {p.name} "
        f"({error}); remove the host, or add it again with the VM's new id "
        f"(`openbdr platform discover {p.name}`); its restore points stay",
        host_id=host.id, job_id=job.id, severity="critical",
    )
