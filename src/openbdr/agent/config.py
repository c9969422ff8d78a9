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

[[disk]]
name = "disk0"
device = "/dev/sda"
# freeze = false                  # crash-consistent only: no FIFREEZE
```
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..capture.linux.cowvol import VolumeSpec
from ..capture.linux.source import CaptureOptions, DiskSpec
from ..chunk import Codec
from ..errors import OpenBDRError
from ..store.manifest import check_host_name


class ConfigError(OpenBDRError):
    """The agent configuration is missing or wrong."""


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


def load(path: str | Path) -> AgentConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"agent configuration {p} not found", "pass --config FILE") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
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
        settle_blocks=_get(raw, "settle_blocks", int, p, 32),
        freeze_copy_blocks=_get(raw, "freeze_copy_blocks", int, p, 64),
        frozen_hook=raw.get("frozen_hook"),
    )
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
    )
