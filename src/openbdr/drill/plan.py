"""Drill plans (TOML): what to start, how to isolate it, and the probes that prove it.

    [drill]
    kind = "vm"            # "vm" boots the disks; "service" starts a service on a volume
    memory = 512           # MiB
    timeout = 600          # whole drill, seconds
    fsck = true            # `fsck -n` every volume before boot
    network = "probes"     # "none", or "probes": user networking, forwarded probe ports only
    accel = "auto"         # "auto" (probe KVM, else TCG), "kvm" or "tcg"
    screenshot = true

    [[probe]]
    type = "console"       # console | shell | tcp | http | sql | guest-exec | file | command
    pattern = "OPENBDR-GUEST-READY"
    timeout = 180

Probes run in plan order; each has its own timeout, counted from when it starts. File
probes read the restored file system before boot, like fsck.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import OpenBDRError

KINDS = ("vm", "service")
PROBES = ("console", "shell", "tcp", "http", "sql", "guest-exec", "file", "command")


class PlanError(OpenBDRError):
    """A drill plan is missing, not TOML, or names unknown things."""


@dataclass
class Probe:
    type: str
    name: str
    timeout: float = 60.0
    pattern: str = ""
    port: int = 0
    path: str = "/"
    status: int = 200
    contains: str = ""
    query: str = ""
    expect: str | None = None
    user: str = "postgres"
    database: str = "postgres"
    command: list[str] = field(default_factory=list)
    volume: str | None = None
    sha256: str | None = None
    exists: bool = True


@dataclass
class Service:
    """For `kind = "service"`: what to start on the restored volume."""

    type: str = "postgresql"  # "postgresql" or "command"
    volume: str | None = None  # partition number or label; the first file system if unset
    data_dir: str = "."  # relative to the volume root
    port: int = 5432
    command: list[str] = field(default_factory=list)
    amcheck: bool = True


@dataclass
class Plan:
    kind: str = "vm"
    memory: int = 512
    cpus: int = 1
    timeout: float = 600.0
    fsck: bool = True
    network: str = "probes"
    accel: str = "auto"
    disk_bus: str = "virtio"
    screenshot: bool = True
    probes: list[Probe] = field(default_factory=list)
    service: Service | None = None
    source: str = ""

    @property
    def forwarded_ports(self) -> list[int]:
        return sorted({p.port for p in self.probes if p.type in ("tcp", "http", "sql")})


def _fields(cls: type, raw: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    bad = sorted(set(raw) - known)
    if bad:
        raise PlanError(
            f"{where}: unknown key(s) {', '.join(bad)}", f"known: {', '.join(sorted(known))}"
        )
    return raw


def parse_plan(text: str, source: str = "plan") -> Plan:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"drill plan {source} is not valid TOML: {exc}") from None
    return plan_from_mapping(raw, source)


def plan_from_mapping(raw: dict[str, Any], source: str = "plan") -> Plan:
    """The same structure as the TOML: {"drill": {…}, "probe": [{…}], "service": {…}}."""
    if not isinstance(raw, dict) or not isinstance(raw.get("drill", {}), dict):
        raise PlanError(f"drill plan {source} is not a table of tables")
    top = dict(raw.get("drill", {}))
    for k in ("probe", "probes", "service"):
        top.pop(k, None)
    plan = Plan(**_fields(Plan, top, f"{source} [drill]"))
    plan.source = source
    if plan.kind not in KINDS:
        raise PlanError(f"{source}: drill kind {plan.kind!r} is unknown", "use vm or service")
    if plan.network not in ("none", "probes"):
        raise PlanError(f"{source}: network {plan.network!r} is unknown", "use none or probes")
    if plan.accel not in ("auto", "kvm", "tcg"):
        raise PlanError(f"{source}: accel {plan.accel!r} is unknown", "use auto, kvm or tcg")
    for i, p in enumerate(raw.get("probe", [])):
        where = f"{source} probe {i + 1}"
        p = dict(p)
        kind = p.get("type")
        if kind not in PROBES:
            raise PlanError(f"{where}: type {kind!r} is unknown", f"use one of {', '.join(PROBES)}")
        p.setdefault("name", f"{kind}-{i + 1}")
        if kind == "shell" and not isinstance(p.get("command"), str):
            raise PlanError(f"{where}: a shell probe's command is one line of text")
        if "command" in p and isinstance(p["command"], str):
            p["command"] = [p["command"]] if kind == "shell" else ["/bin/sh", "-c", p["command"]]
        if "volume" in p and p["volume"] is not None:
            p["volume"] = str(p["volume"])
        probe = Probe(**_fields(Probe, p, where))
        need = {
            "console": "pattern",
            "shell": "command",
            "tcp": "port",
            "http": "port",
            "sql": "port",
            "guest-exec": "command",
            "file": "path",
            "command": "command",
        }[kind]
        if not getattr(probe, need):
            raise PlanError(f"{where}: a {kind} probe needs `{need}`")
        if kind in ("console", "shell", "guest-exec") and plan.kind != "vm":
            raise PlanError(f"{where}: {kind} probes need a vm drill")
        plan.probes.append(probe)
    if "service" in raw:
        s = dict(raw["service"])
        if "volume" in s and s["volume"] is not None:
            s["volume"] = str(s["volume"])
        plan.service = Service(**_fields(Service, s, f"{source} [service]"))
    if plan.kind == "service" and plan.service is None:
        raise PlanError(f"{source}: a service drill needs a [service] table")
    if not plan.probes and plan.kind == "vm":
        raise PlanError(f"{source}: no [[probe]]", "a drill proves nothing without probes")
    return plan


#: used when a policy names no plan: boot, and wait for a login prompt or the ready marker
DEFAULT_PLAN = """
[drill]
kind = "vm"
network = "none"

[[probe]]
type = "console"
name = "guest ready"
pattern = "OPENBDR-GUEST-READY|login: *$"
timeout = 600
"""


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PlanError(f"cannot read drill plan {p}: {exc.strerror}") from None
    return parse_plan(text, str(p))
