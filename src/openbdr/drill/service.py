"""Service drills: start a service on a restored data volume in an isolated network namespace.

The volume is a loop device over the point's FUSE file (writable overlay, thrown away),
mounted read-write so the service's own recovery (WAL replay, journal) can run. The
namespace has only its own loopback: the service can reach nothing, and only probes
run inside the namespace can reach it.

PostgreSQL runs as the owner of its data directory with a configuration written by the
drill (listen on 127.0.0.1 in the namespace, trust auth), so a Debian-style cluster
whose configuration lives in /etc works too. After it accepts connections,
`pg_amcheck` checks every table and index.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OpenBDRError
from .checks import Check, mount_volume
from .probes import ProbeContext, ProbeResult
from .resources import Resources
from .volumes import find_volume, volumes

if TYPE_CHECKING:
    from .runner import Drill


class ServiceError(OpenBDRError):
    """The drilled service could not be started (a finding, reported as a failed drill)."""


def _pg_bin(data: Path, tool: str) -> str:
    try:
        version = (data / "PG_VERSION").read_text().strip()
    except OSError:
        raise ServiceError(
            f"{data} is not a PostgreSQL data directory (no PG_VERSION)",
            "set [service] data_dir to the cluster's directory on the volume",
        ) from None
    path = Path(f"/usr/lib/postgresql/{version}/bin/{tool}")
    if not path.exists():
        raise ServiceError(
            f"PostgreSQL {version} ({tool}) is not installed on the drill host",
            f"install postgresql-{version}",
        )
    return str(path)


def _as_owner(data: Path) -> list[str]:
    st = data.stat()
    if st.st_uid == 0:
        raise ServiceError(f"{data} is owned by root", "PostgreSQL refuses to run as root")
    return ["setpriv", f"--reuid={st.st_uid}", f"--regid={st.st_gid}", "--clear-groups"]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _why(log: str) -> str:
    for level in ("PANIC", "FATAL", "ERROR"):
        hits = [ln for ln in log.splitlines() if f"{level}:" in ln]
        if hits:
            return hits[-1].split(f"{level}:", 1)[1].strip()
    return log.splitlines()[-1] if log else "no log"


def start_postgres(drill: Drill, res: Resources, work: Path, data: Path, ns: str) -> Path:
    """Start PostgreSQL on `data` inside `ns`; returns its log. Raises ServiceError."""
    svc = drill.plan.service
    assert svc is not None
    pg_ctl = _pg_bin(data, "pg_ctl")
    owner = _as_owner(data)
    st = data.stat()
    run_dir = work / "pg"
    run_dir.mkdir()
    os.chown(run_dir, st.st_uid, st.st_gid)
    (run_dir / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
    )
    (run_dir / "pg_ident.conf").write_text("")
    conf = run_dir / "postgresql.conf"
    conf.write_text(
        f"listen_addresses = '127.0.0.1'\nport = {svc.port}\n"
        f"unix_socket_directories = '{run_dir}'\n"
        f"hba_file = '{run_dir / 'pg_hba.conf'}'\nident_file = '{run_dir / 'pg_ident.conf'}'\n"
        "max_connections = 20\nshared_buffers = '32MB'\narchive_mode = off\n"
        "restore_command = ''\njit = off\nlogging_collector = off\n"
    )
    for f in run_dir.iterdir():
        os.chown(f, st.st_uid, st.st_gid)
    log = run_dir / "postgresql.log"
    pid_file = data / "postmaster.pid"
    pid_file.unlink(missing_ok=True)  # a crash-consistent copy carries the old one
    opts = f"-c config_file={conf}"
    cmd = [
        "ip",
        "netns",
        "exec",
        ns,
        *owner,
        pg_ctl,
        "-D",
        str(data),
        "-l",
        str(log),
        "-o",
        opts,
        "-w",
        "-t",
        str(int(drill.plan.timeout)),
        "start",
    ]
    drill.say(f"starting PostgreSQL on {data} in namespace {ns}")

    def stop() -> None:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                *owner,
                pg_ctl,
                "-D",
                str(data),
                "-m",
                "immediate",
                "-t",
                "30",
                "stop",
            ],
            capture_output=True,
        )

    res.stack.callback(stop)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        pid = int(pid_file.read_text().split()[0])
        res.registry.add_pid(pid)
        res.stack.callback(lambda: res.registry.remove("pid", pid))
    except (OSError, ValueError, IndexError):
        pass
    drill.report.service_log_tail = _tail(log)
    if proc.returncode != 0:
        why = _why(_tail(log, 200)) if log.exists() else (proc.stderr.strip() or "no log")
        raise ServiceError(f"PostgreSQL did not start: {why.splitlines()[-1] if why else why}")
    drill.mark("service_started")
    return log


def amcheck(drill: Drill, data: Path, ns: str) -> ProbeResult:
    svc = drill.plan.service
    assert svc is not None
    t = time.monotonic()
    cmd = [
        "ip",
        "netns",
        "exec",
        ns,
        *_as_owner(data),
        _pg_bin(data, "pg_amcheck"),
        "-h",
        "127.0.0.1",
        "-p",
        str(svc.port),
        "-U",
        "postgres",
        "--all",
        "--install-missing",
        "--heapallindexed",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=max(60.0, drill.plan.timeout)
    )
    now = time.monotonic()
    out = (proc.stdout + proc.stderr).strip()
    ok = proc.returncode == 0
    detail = "no corruption found" if ok and not out else out[-500:] or f"exit {proc.returncode}"
    return ProbeResult(
        "pg_amcheck", "amcheck", ok, detail, now - drill.t0 if ok else None, now - t, 1
    )


def run_service(drill: Drill, res: Resources, work: Path, ctx: ProbeContext) -> None:
    svc = drill.plan.service
    assert svc is not None
    point = drill.point
    os.chmod(work, 0o711)  # the service's user must reach its mounted volume
    for parent in work.parents if svc.type == "postgresql" else []:
        if not os.stat(parent).st_mode & 0o001:
            raise ServiceError(
                f"{parent} is not searchable by other users, so the service's user cannot "
                "reach the drill's volume",
                "set TMPDIR to a directory like /tmp (mode 1777 or 0711 parents)",
            )
    disks = work / "disks"
    if not os.path.ismount(disks):
        res.fuse_point(drill.repo.url, point.host, point.id, disks, overlay=True, tmpdir=work)
    from .image import PointImage

    found = None
    for d in point.disks:
        v = find_volume(volumes(PointImage(drill.repo.reader(point, d), cache_blocks=8)), svc.volume)
        if v is not None and v.fstype:
            found = (d, v)
            break
    if found is None:
        raise_check = Check(
            "service volume",
            "layout",
            False,
            f"no volume {svc.volume or 'with a file system'} on the point",
            0.0,
        )
        drill.checks.append(raise_check)
        drill.report.reason = f"{raise_check.name}: {raise_check.detail}"
        return
    d, v = found
    root = mount_volume(res, disks / d.name, v, work / "service-volume", options="rw")
    drill.mark("volume_mounted")
    ns = res.netns(f"obdr-{drill.id[-6:]}-{os.getpid()}")
    ctx.netns = ns
    data = (root / svc.data_dir).resolve()
    try:
        if svc.type == "postgresql":
            start_postgres(drill, res, work, data, ns)
        else:
            log = work / "service.log"
            with open(log, "wb") as f:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns, *svc.command],
                    cwd=root,
                    stdout=f,
                    stderr=f,
                    stdin=subprocess.DEVNULL,
                )
            res.registry.add_pid(proc.pid)

            def stop() -> None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
                res.registry.remove("pid", proc.pid)
                drill.report.service_log_tail = _tail(log)

            res.stack.callback(stop)
    except ServiceError as exc:
        drill.checks.append(Check(f"start {svc.type}", "service", False, exc.what, 0.0))
        drill.report.reason = f"start {svc.type}: {exc.what}"
        return
    ctx.mounts.update({"": root, str(v.number): root})
    if v.label:
        ctx.mounts[v.label] = root
    drill.probe(ctx, skip={"console", "shell", "guest-exec"})
    if svc.type == "postgresql" and svc.amcheck:
        drill.say("pg_amcheck --all")
        r = amcheck(drill, data, ns)
        drill.results.append(r)
        drill.say(f"pg_amcheck: {'PASS' if r.ok else 'FAIL'}: {r.detail}")
        drill.report.service_log_tail = _tail(work / "pg" / "postgresql.log")
