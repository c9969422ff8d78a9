"""The agent's configuration file (TOML).

```toml
host = "db1"                      # name of the protected host in the repository
repo = "/srv/openbdr"             # directory or s3://bucket/prefix
state_dir = "/var/lib/openbdr-agent"   # never on a protected file system
socket = "/run/openbdr-agent.sock"
interval = 900                    # seconds between syncs; 0: only on request
compression = "zstd"
freeze_timeout = 10               # the watchdog thaws after this many seconds
# frozen_hook = "/usr/local/bin/array-snapshot"   # run while file systems are frozen

[control]                         # optional: also pull this host's jobs from a server
credential = "/etc/openbdr/agent.json"   # written by `openbdr agent enrol --config THIS`
workers = 1                       # jobs run at once
poll = 2                          # seconds between polls when idle

[[disk]]
name = "disk0"
device = "/dev/sda"
# freeze = false                  # crash-consistent only: no FIFREEZE
```
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..capture.linux.cowvol import VolumeSpec
from ..capture.linux.source import CaptureOptions, DiskSpec
from ..chunk import Codec
from ..errors import OpenBDRError
from ..store.manifest import check_host_name

log = logging.getLogger(__name__)


class ConfigError(OpenBDRError):
    """The agent configuration is missing or wrong."""


@dataclass
class ControlLink:
    """`[control]`: the daemon also leases its pool's jobs from a control-plane server."""

    #: the credential `agent enrol` wrote (server URL, agent name, pool, secret)
    credential: Path
    workers: int = 1
    poll: float = 2.0


@dataclass
class AgentConfig:
    path: Path
    host: str
    repo: str
    state_dir: Path
    socket: Path
    disks: list[DiskSpec]
    interval: float = 0.0
    compression: Codec = Codec.NONE
    password_file: str | None = None
    capture: CaptureOptions = field(default_factory=CaptureOptions)
    trace_buffer_kb: int = 4096
    #: copy-on-write volumes of this agent ([[disk]] with `volume = DIR`)
    volumes: list[VolumeSpec] = field(default_factory=list)
    #: "auto" (use dattobd / elastio-snap when loaded), "none", "dattobd", "elastio-snap"
    snapshot_driver: str = "auto"
    #: overrides of the driver's paths: ctl, info, snap_dev
    driver_paths: dict[str, str] = field(default_factory=dict)
    #: per disk name: directory for the driver's COW files (on the disk itself)
    cow_dirs: dict[str, str] = field(default_factory=dict)
    #: pull jobs from a control-plane server too (None: a standalone agent)
    control: ControlLink | None = None


def _get(raw: dict[str, Any], key: str, kind: type, path: Path, default: Any = None) -> Any:
    if key not in raw:
        if default is None:
            raise ConfigError(f"{path}: missing `{key}`", "see docs/agent.md for the format")
        return default
    val = raw[key]
    if kind is float and isinstance(val, int):
        val = float(val)
    if not isinstance(val, kind):
        raise ConfigError(f"{path}: `{key}` must be a {kind.__name__}, not {val!r}")
    return val


def _read(p: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"agent configuration {p} not found", "pass --config FILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None


def is_credential(path: str | Path) -> bool:
    """True for a bare control-plane credential (JSON, as `agent enrol` writes it), False
    for a TOML agent configuration: `agent run` is a job puller only for the former."""
    try:
        head = Path(path).read_text().lstrip()[:1]
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return str(path).endswith(".json")
    return head == "{"


def credential_path(path: str | Path) -> Path:
    """Where `agent enrol --config FILE` writes the credential: FILE itself when it is (or
    will be) a JSON credential; `[control] credential` (or its default) of a TOML one."""
    p = Path(path)
    if not p.exists() and p.suffix == ".toml":
        raise ConfigError(
            f"agent configuration {p} not found",
            "write it first (docs/agent.md), or pass --config FILE.json for a proxy",
        )
    if is_credential(p) or not p.exists():
        return p
    raw = _read(p)
    return _link(raw.get("control") or {}, raw, p).credential


def _control(raw: dict[str, Any], p: Path) -> ControlLink | None:
    sec = raw.get("control")
    return None if sec is None else _link(sec, raw, p)


def _link(sec: Any, raw: dict[str, Any], p: Path) -> ControlLink:
    if not isinstance(sec, dict) or set(sec) - {"credential", "workers", "poll"}:
        raise ConfigError(f"{p}: [control] takes only credential, workers and poll")
    state_dir = Path(str(raw.get("state_dir", "/var/lib/openbdr-agent")))
    link = ControlLink(
        credential=Path(_get(sec, "credential", str, p, str(state_dir / "control.json"))),
        workers=_get(sec, "workers", int, p, 1),
        poll=_get(sec, "poll", float, p, 2.0),
    )
    if link.workers < 1 or link.poll <= 0:
        raise ConfigError(f"{p}: [control] needs workers >= 1 and poll > 0")
    return link


def load(path: str | Path) -> AgentConfig:
    p = Path(path)
    raw = _read(p)
    host = check_host_name(_get(raw, "host", str, p))
    disks_raw = raw.get("disk")
    if not isinstance(disks_raw, list) or not disks_raw:
        raise ConfigError(f"{p}: no [[disk]] tables", "list each protected device")
    disks = []
    volumes = []
    cow_dirs = {}
    names = set()
    for i, d in enumerate(disks_raw):
        if not isinstance(d, dict) or ("device" in d) == ("volume" in d):
            raise ConfigError(
                f"{p}: [[disk]] number {i + 1} needs either `device` or `volume`"
            )
        name = str(d.get("name") or f"disk{i}")
        if name in names:
            raise ConfigError(f"{p}: two disks named {name!r}", "give each [[disk]] its own name")
        names.add(name)
        if "volume" in d:
            volumes.append(
                VolumeSpec(name=name, dir=Path(d["volume"]), freeze=bool(d.get("freeze", True)))
            )
            continue
        if "cow_dir" in d:
            cow_dirs[name] = str(d["cow_dir"])
        disks.append(
            DiskSpec(name=name, device=str(d["device"]), freeze=bool(d.get("freeze", True)))
        )
    if disks and volumes:
        raise ConfigError(
            f"{p}: block devices and copy-on-write volumes in one agent",
            "run one agent (one host) per kind of disk",
        )
    driver = _get(raw, "snapshot_driver", str, p, "auto")
    if driver not in ("auto", "none", "dattobd", "elastio-snap"):
        raise ConfigError(
            f"{p}: `snapshot_driver` must be auto, none, dattobd or elastio-snap, not {driver!r}"
        )
    paths = raw.get("driver") or {}
    if not isinstance(paths, dict) or set(paths) - {"ctl", "info", "snap_dev"}:
        raise ConfigError(f"{p}: [driver] takes only ctl, info and snap_dev")
    state_dir = Path(_get(raw, "state_dir", str, p, "/var/lib/openbdr-agent"))
    interval = _get(raw, "interval", float, p, 0.0)
    if interval < 0:
        raise ConfigError(f"{p}: `interval` must be >= 0 seconds")
    capture = CaptureOptions(
        freeze_timeout=_get(raw, "freeze_timeout", float, p, 10.0),
        max_passes=_get(raw, "max_passes", int, p, 4),
        freeze_copy_blocks=_get(raw, "freeze_copy_blocks", int, p, 64),
        stage_blocks=_get(raw, "stage_blocks", int, p, 16384),
        stage_memory=_get(raw, "stage_memory", int, p, 1024) << 20,
        stage_keep=_get(raw, "stage_keep", float, p, 120.0),
        frozen_hook=raw.get("frozen_hook"),
    )
    if "settle_blocks" in raw:  # the stop rule of the live passes no longer needs it
        log.warning("%s: `settle_blocks` is no longer used (see freeze_copy_blocks)", p)
    if capture.stage_keep < 0:
        raise ConfigError(f"{p}: `stage_keep` must be >= 0 seconds")
    if not 0.5 <= capture.freeze_timeout <= 120:
        raise ConfigError(f"{p}: `freeze_timeout` must be between 0.5 and 120 seconds")
    try:
        codec = Codec.parse(_get(raw, "compression", str, p, "none"))
    except (OpenBDRError, ValueError, KeyError) as exc:
        raise ConfigError(f"{p}: bad `compression` ({exc})") from None
    return AgentConfig(
        path=p,
        host=host,
        repo=_get(raw, "repo", str, p),
        state_dir=state_dir,
        socket=Path(_get(raw, "socket", str, p, str(state_dir / "agent.sock"))),
        disks=disks,
        interval=interval,
        compression=codec,
        password_file=raw.get("password_file"),
        capture=capture,
        trace_buffer_kb=_get(raw, "trace_buffer_kb", int, p, 4096),
        volumes=volumes,
        snapshot_driver=driver,
        driver_paths={k: str(v) for k, v in paths.items()},
        cow_dirs=cow_dirs,
        control=_control(raw, p),
    )


def remove_disk(path: str | Path, name: str) -> None:
    """Delete the `[[disk]]` table named `name` from the configuration file, keeping the
    rest as written (comments too); the file is replaced atomically."""
    p = Path(path)
    lines = p.read_text().splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if ln.strip().startswith("[")]
    for k, i in enumerate(starts):
        if lines[i].strip() != "[[disk]]":
            continue
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        table = tomllib.loads("".join(lines[i + 1 : end]))
        index = sum(1 for j in starts[:k] if lines[j].strip() == "[[disk]]")
        if str(table.get("name") or f"disk{index}") == name:
            break
    else:
        raise ConfigError(f"{p}: no [[disk]] named {name!r}")
    text = "".join(lines[:i] + lines[end:])
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, p.stat().st_mode & 0o7777)
    os.replace(tmp, p)


def run_dir() -> Path:
    """Where running daemons say which configuration they use (one file per process)."""
    return Path(os.environ.get("OPENBDR_RUN_DIR", "/run/openbdr")) / "agents"


def running_configs() -> list[Path]:
    """Configurations of the agent daemons running on this machine."""
    out = []
    for f in sorted(run_dir().glob("*.json")):
        try:
            rec = json.loads(f.read_text())
            os.kill(int(rec["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue  # a daemon that was killed: its record is stale
        out.append(Path(rec["config"]))
    return out
