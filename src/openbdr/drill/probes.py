"""Probes: each proves one thing about the drilled system, retried until its timeout.

A probe passes at the first attempt that meets its expectation; its time is reported
from the drill's start (for RTO) and from its own start.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plan import Probe
from .vm import Vm

POLL = 0.5


@dataclass
class ProbeResult:
    name: str
    type: str
    ok: bool
    detail: str
    #: seconds from the drill's start to when this probe passed (None if it failed)
    passed_at: float | None
    duration: float
    attempts: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class ProbeContext:
    """Where probes find the drilled system."""

    t0: float
    vm: Vm | None = None
    #: guest (or service) port → host port on 127.0.0.1
    ports: dict[int, int] = field(default_factory=dict)
    #: prefix for commands that must run inside the drill's network namespace
    netns: str | None = None
    #: volume key ("1", label, or "" for the default) → mounted root
    mounts: dict[str, Path] = field(default_factory=dict)
    qga_path: Path | None = None


Attempt = Callable[[], tuple[bool, str]]


def _retry(probe: Probe, ctx: ProbeContext, attempt: Attempt) -> ProbeResult:
    start = time.monotonic()
    deadline = start + probe.timeout
    n = 0
    detail = "not tried"
    while True:
        n += 1
        try:
            ok, detail = attempt()
        except Exception as exc:  # a probe's failure is a finding, not a crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if ok:
            return ProbeResult(probe.name, probe.type, True, detail, now - ctx.t0, now - start, n)
        if now >= deadline or (ctx.vm is not None and not ctx.vm.running()):
            if ctx.vm is not None and not ctx.vm.running():
                detail += " (the VM stopped)"
            return ProbeResult(
                probe.name,
                probe.type,
                False,
                f"timed out after {probe.timeout:g} s: {detail}",
                None,
                now - start,
                n,
            )
        time.sleep(min(POLL, max(0.0, deadline - now)))


def _in_ns(ctx: ProbeContext, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ctx.netns, *cmd] if ctx.netns else cmd


def _host_port(ctx: ProbeContext, port: int) -> int:
    return ctx.ports.get(port, port)


def _tcp(probe: Probe, ctx: ProbeContext) -> Attempt:
    port = _host_port(ctx, probe.port)

    def attempt() -> tuple[bool, str]:
        if ctx.netns:
            code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 3).close()"
            proc = subprocess.run(
                _in_ns(ctx, [sys.executable, "-c", code]),
                capture_output=True,
                text=True,
                timeout=10,
            )
            if proc.returncode:
                return False, (proc.stderr.strip().splitlines() or ["refused"])[-1]
            return True, f"port {probe.port} accepts connections"
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return True, f"port {probe.port} accepts connections (host port {port})"

    return attempt


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status), r.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(1 << 20).decode(errors="replace")


def _http(probe: Probe, ctx: ProbeContext) -> Attempt:
    port = _host_port(ctx, probe.port)
    url = f"http://127.0.0.1:{port}{probe.path}"

    def attempt() -> tuple[bool, str]:
        if ctx.netns:
            code = (
                "import json,sys,urllib.request as u;r=u.urlopen(sys.argv[1],timeout=5);"
                "print(json.dumps([r.status,r.read(1<<20).decode(errors='replace')]))"
            )
            proc = subprocess.run(
                _in_ns(ctx, [sys.executable, "-c", code, url]),
                capture_output=True,
                text=True,
                timeout=15,
            )
            if proc.returncode:
                return False, (proc.stderr.strip().splitlines() or ["failed"])[-1]
            status, body = json.loads(proc.stdout)
        else:
            status, body = _http_get(url)
        if status != probe.status:
            return False, f"GET {probe.path} gave {status}, want {probe.status}"
        if probe.contains and probe.contains not in body:
            return False, f"GET {probe.path} body lacks {probe.contains!r}"
        return True, f"GET {probe.path} → {status}" + (
            f", body has {probe.contains!r}" if probe.contains else ""
        )

    return attempt


def _sql(probe: Probe, ctx: ProbeContext) -> Attempt:
    port = _host_port(ctx, probe.port)

    def attempt() -> tuple[bool, str]:
        cmd = [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            probe.user,
            "-d",
            probe.database,
            "-X",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            probe.query,
        ]
        proc = subprocess.run(
            _in_ns(ctx, cmd),
            capture_output=True,
            text=True,
            timeout=30,
            env={"PGCONNECT_TIMEOUT": "5", "PATH": "/usr/bin:/bin"},
        )
        if proc.returncode:
            return False, (proc.stderr.strip().splitlines() or [f"psql rc {proc.returncode}"])[-1]
        got = proc.stdout.strip()
        if probe.expect is not None and got != probe.expect:
            return False, f"{probe.query!r} returned {got!r}, want {probe.expect!r}"
        return True, f"{probe.query!r} returned {got[:200]!r}"

    return attempt


def _console(probe: Probe, ctx: ProbeContext) -> Attempt:
    def attempt() -> tuple[bool, str]:
        assert ctx.vm is not None
        m = ctx.vm.wait_console(probe.pattern, POLL * 2)
        if m:
            return True, f"console matched {m.group(0)[:200]!r}"
        return False, f"console has no match for {probe.pattern!r}"

    return attempt


def _after_echo(out: str, end: str) -> str:
    """What follows the echoed command line, wherever the terminal wrapped it."""
    flat = out.replace("\r", "").replace("\n", "")
    if end not in flat:
        return out
    target = flat.index(end) + len(end)
    seen = 0
    for pos, ch in enumerate(out):
        if ch not in "\r\n":
            seen += 1
            if seen == target:
                return out[pos + 1 :]
    return ""


def _shell(probe: Probe, ctx: ProbeContext) -> Attempt:
    """One command line typed on the serial console's shell; passes on exit status 0."""

    def attempt() -> tuple[bool, str]:
        vm = ctx.vm
        assert vm is not None
        token = secrets.token_hex(4)
        start = len(vm.console_text())
        vm.send_console(f"{probe.command[0]}; echo OBDR-{token}-RC=$?\n")
        m = vm.wait_console(rf"OBDR-{token}-RC=(\d+)", min(60.0, probe.timeout))
        if m is None:
            return False, "no answer from the console shell"
        out = vm.console_text()[start : m.start()].replace("\x1b[6n", "")
        out = _after_echo(out, "RC=$?")
        out = out.strip()
        rc = int(m.group(1))
        if rc != 0:
            return False, f"exit {rc}: {out[-300:]!r}"
        if probe.expect is not None and probe.expect not in out:
            return False, f"output lacks {probe.expect!r}: {out[-300:]!r}"
        return True, f"exit 0: {out[-200:]!r}"

    return attempt


def _file(probe: Probe, ctx: ProbeContext) -> Attempt:
    def attempt() -> tuple[bool, str]:
        root = ctx.mounts.get(probe.volume or "")
        if root is None:
            return False, f"volume {probe.volume or '(default)'} is not mounted"
        path = root / probe.path.lstrip("/")
        if not path.exists():
            return (not probe.exists), f"{probe.path} does not exist"
        if not probe.exists:
            return False, f"{probe.path} exists"
        if probe.sha256:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != probe.sha256.lower():
                return False, f"{probe.path} has sha256 {h.hexdigest()}, want {probe.sha256}"
            return True, f"{probe.path} sha256 matches"
        return True, f"{probe.path} exists"

    return attempt


def _command(probe: Probe, ctx: ProbeContext) -> Attempt:
    def attempt() -> tuple[bool, str]:
        proc = subprocess.run(
            _in_ns(ctx, probe.command),
            capture_output=True,
            text=True,
            timeout=max(5.0, probe.timeout),
        )
        out = proc.stdout.strip()
        if proc.returncode:
            return False, f"exit {proc.returncode}: {(proc.stderr.strip() or out)[-300:]}"
        if probe.expect is not None and probe.expect not in out:
            return False, f"output lacks {probe.expect!r}: {out[-300:]!r}"
        return True, f"exit 0: {out[-200:]!r}"

    return attempt


def _guest_exec(probe: Probe, ctx: ProbeContext) -> Attempt:
    def attempt() -> tuple[bool, str]:
        if ctx.qga_path is None:
            return False, "the drill VM has no guest-agent channel"
        from .qga import guest_exec

        rc, out, err = guest_exec(ctx.qga_path, probe.command, timeout=min(30.0, probe.timeout))
        if rc != 0:
            return False, f"exit {rc}: {(err or out)[-300:]}"
        if probe.expect is not None and probe.expect not in out:
            return False, f"output lacks {probe.expect!r}: {out[-300:]!r}"
        return True, f"exit 0: {out.strip()[-200:]!r}"

    return attempt


_KINDS: dict[str, Callable[[Probe, ProbeContext], Attempt]] = {
    "tcp": _tcp,
    "http": _http,
    "sql": _sql,
    "console": _console,
    "shell": _shell,
    "file": _file,
    "command": _command,
    "guest-exec": _guest_exec,
}


def run_probe(probe: Probe, ctx: ProbeContext) -> ProbeResult:
    return _retry(probe, ctx, _KINDS[probe.type](probe, ctx))
