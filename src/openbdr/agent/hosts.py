"""Which source captures the agent's disks: its own volumes, a snapshot driver, or tracing.

- `[[disk]] volume = DIR` everywhere: copy-on-write volumes of this agent (point-in-time
  snapshots, exact change lists, a freeze of a few ms);
- else, when dattobd or elastio-snap is loaded (`snapshot_driver = "auto"`, or named):
  the driver's snapshots and its COW index as the change list;
- else: tracepoint change tracking and multi-pass capture with a short final freeze.
"""

from __future__ import annotations

from pathlib import Path

from ..capture.linux.cowvol import CowVolHost
from ..capture.linux.snapdriver import Driver, DriverDiskSpec, DriverHost, detect
from ..capture.linux.source import AgentHost
from ..errors import SourceError
from .config import AgentConfig

AnyHost = AgentHost | CowVolHost | DriverHost


def driver_for(config: AgentConfig) -> Driver | None:
    kind = config.snapshot_driver
    if kind == "none":
        return None
    if kind == "auto" and not config.driver_paths:
        return detect()
    d = Driver.named("dattobd" if kind == "auto" else kind)
    paths = config.driver_paths
    d.ctl = paths.get("ctl", d.ctl)
    d.info = Path(paths.get("info", d.info))
    d.snap_dev = paths.get("snap_dev", d.snap_dev)
    if kind != "auto" and not d.present():
        raise SourceError(
            f"snapshot driver {kind} is not available ({d.info} or {d.ctl} missing)",
            'load the module, or set snapshot_driver = "auto" to fall back to tracing',
        )
    return d if d.present() else None


def open_host(config: AgentConfig) -> AnyHost:
    if config.volumes:
        c = config.capture
        return CowVolHost(config.host, config.volumes, c.freeze_timeout, c.frozen_hook)
    drv = driver_for(config)
    if drv is not None:
        specs = [
            DriverDiskSpec(d.name, d.device, config.cow_dirs.get(d.name)) for d in config.disks
        ]
        return DriverHost(config.host, specs, config.state_dir, drv)
    return AgentHost(
        config.host, config.disks, config.state_dir, config.capture, config.trace_buffer_kb
    )
