"""What a drill may leave behind, to compare before and after.

Everything is scoped to one directory (the tests' TMPDIR, see conftest `scope`): other
engineers' tests run drills on this machine at the same time, and their QEMUs, mounts
and temp dirs are not ours to count.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Snapshot:
    processes: frozenset[str]
    mounts: frozenset[str]
    loops: frozenset[str]
    netns: frozenset[str]
    temp: frozenset[str]
    listeners: frozenset[str]


def _processes(scope: str) -> frozenset[str]:
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if scope in cmd and state != "Z" and int(pid) != os.getpid():
            out.add(f"{pid} {cmd[:200]}")
    return frozenset(out)


def snapshot(scope: str) -> Snapshot:
    mounts = frozenset(
        ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines() if scope in ln
    )
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    loops = frozenset(ln for ln in losetup.splitlines() if scope in ln)
    netns = frozenset(
        n
        for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
        if n.startswith("obdr-")
    )
    temp = frozenset(p.name for p in Path(scope).iterdir() if p.name.startswith("openbdr-"))
    ss = subprocess.run(["ss", "-Hlx"], capture_output=True, text=True).stdout
    listeners = frozenset(ln for ln in ss.splitlines() if scope in ln)
    return Snapshot(_processes(scope), mounts, loops, netns, temp, listeners)


def leaked(before: Snapshot, after: Snapshot) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in Snapshot.__dataclass_fields__:
        extra = getattr(after, f) - getattr(before, f)
        if extra:
            out[f] = sorted(extra)
    return out
