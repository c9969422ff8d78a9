"""What a drill may leave behind, to compare before and after."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Snapshot:
    qemu: frozenset[int]
    fuse_servers: frozenset[int]
    mounts: frozenset[str]
    loops: frozenset[str]
    netns: frozenset[str]
    temp: frozenset[str]
    listeners: frozenset[str]


def _pids(pattern: str) -> frozenset[int]:
    proc = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return frozenset(int(x) for x in proc.stdout.split())


def snapshot() -> Snapshot:
    ours = ("openbdr-drill-", "openbdr-mount-")
    mounts = frozenset(
        ln.split()[1]
        for ln in Path("/proc/mounts").read_text().splitlines()
        if any(o in ln for o in ours) or ln.startswith("openbdr ")
    )
    loops = frozenset(
        ln
        for ln in subprocess.run(
            ["losetup", "-a"], capture_output=True, text=True
        ).stdout.splitlines()
        if any(o in ln for o in ours)
    )
    netns = frozenset(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else frozenset()
    tmp = Path(tempfile.gettempdir())
    temp = frozenset(
        p.name
        for p in tmp.iterdir()
        if p.name.startswith(("openbdr-drill-", "openbdr-mount-", "openbdr-cow-"))
    )
    ss = subprocess.run(["ss", "-Hltnx"], capture_output=True, text=True).stdout
    listeners = frozenset(ln for ln in ss.splitlines() if any(o in ln for o in ours))
    return Snapshot(
        _pids("qemu-system-x86_64 -name openbdr-drill"),
        _pids("openbdr.drill.fusefile"),
        mounts,
        loops,
        netns,
        temp,
        listeners,
    )


def leaked(before: Snapshot, after: Snapshot) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in Snapshot.__dataclass_fields__:
        extra = getattr(after, f) - getattr(before, f)
        if extra:
            out[f] = sorted(extra)
    return out
