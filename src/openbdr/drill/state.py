"""Where drills keep runtime state, and the orphan registry that makes teardown total.

Each running drill writes `<state>/drills/<id>.json` naming its runner and everything it
started (processes with their start times, mounts, loop devices, network namespaces,
paths). A drill removes its record when it has torn down. Any later run first cleans
up after records whose runner is gone (killed, OOM, power loss of the runner only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def state_dir() -> Path:
    """$OPENBDR_STATE_DIR, /run/openbdr (root), or $XDG_RUNTIME_DIR/openbdr."""
    env = os.environ.get("OPENBDR_STATE_DIR")
    if env:
        base = Path(env)
    elif os.geteuid() == 0:
        base = Path("/run/openbdr")
    else:
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/openbdr-{os.geteuid()}")
        base = base / "openbdr"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    return base


def proc_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (guards against a reused pid); None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19])


def alive(pid: int, start: int | None) -> bool:
    now = proc_start_time(pid)
    return now is not None and (start is None or now == start)


@dataclass
class Record:
    """Everything one drill started, in creation order; undone last first."""

    id: str
    runner_pid: int
    runner_start: int | None
    created: float = field(default_factory=time.time)
    #: [kind, value]: ["pid", [pid, start]], ["mount", path], ["loop", dev], ["netns", name],
    #: ["path", path]
    steps: list[list[Any]] = field(default_factory=list)


class Registry:
    """The drill's own record, saved on every change so a kill leaves an accurate list."""

    def __init__(self, drill_id: str) -> None:
        self.dir = state_dir() / "drills"
        self.dir.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self.record = Record(drill_id, pid, proc_start_time(pid))
        self.path = self.dir / f"{drill_id}.json"
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.record)))
        os.replace(tmp, self.path)

    def add_pid(self, pid: int) -> None:
        self.add("pid", [pid, proc_start_time(pid) or 0])

    def add(self, kind: str, value: Any) -> None:
        self.record.steps.append([kind, value])
        self._save()

    def remove(self, kind: str, value: Any) -> None:
        steps = self.record.steps
        for i in range(len(steps) - 1, -1, -1):
            k, v = steps[i]
            if k == kind and (v == value or (kind == "pid" and v[0] == value)):
                del steps[i]
                break
        self._save()

    def close(self) -> None:
        """All torn down: forget the record."""
        self.path.unlink(missing_ok=True)


def kill_pid(pid: int, start: int | None, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace`, only if `pid` is still the process we started."""
    if not alive(pid, start):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid, start) or _zombie(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return raw[raw.rindex(")") + 2 :].startswith("Z")


def _undo_step(kind: str, value: Any) -> str | None:
    if kind == "pid":
        kill_pid(int(value[0]), int(value[1]) or None)
    elif kind == "mount" and os.path.ismount(value):
        proc = subprocess.run(["umount", value], capture_output=True, text=True)
        if proc.returncode != 0:
            proc = subprocess.run(["umount", "-l", value], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"mount {value}: {proc.stderr.strip()}"
    elif kind == "loop":
        subprocess.run(["losetup", "-d", value], capture_output=True)
    elif kind == "netns" and Path(f"/run/netns/{value}").exists():
        proc = subprocess.run(["ip", "netns", "delete", value], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"netns {value}: {proc.stderr.strip()}"
    elif kind == "path":
        path = Path(value)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if path.exists():
            return f"path {value} remains"
    return None


def undo(rec: Record) -> list[str]:
    """Tear down what a record lists, last first; returns what could not be undone."""
    problems = []
    for kind, value in reversed(rec.steps):
        problem = _undo_step(kind, value)
        if problem:
            problems.append(problem)
    return problems


def clean_orphans() -> list[str]:
    """Undo the records of drills whose runner is gone; the ids cleaned."""
    d = state_dir() / "drills"
    if not d.is_dir():
        return []
    cleaned = []
    for f in sorted(d.glob("*.json")):
        try:
            raw = json.loads(f.read_text())
            rec = Record(**raw)
        except (OSError, ValueError, TypeError):
            f.unlink(missing_ok=True)
            continue
        if alive(rec.runner_pid, rec.runner_start):
            continue
        problems = undo(rec)
        for p in problems:
            log.warning("orphan of drill %s: %s", rec.id, p)
        f.unlink(missing_ok=True)
        cleaned.append(rec.id)
    return cleaned
