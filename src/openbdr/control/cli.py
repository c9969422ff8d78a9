"""`openbdr server|target|host|policy|job|point|alert|user|token`: the control plane.

(`openbdr agent …`, enrolment and job pulling included, is `agent/cli.py`.) Everything
but `server` talks to a server over the API: `--server` /
`OPENBDR_SERVER`, `--token` / `OPENBDR_TOKEN` (or `OPENBDR_TOKEN_FILE`, e.g. the
server's `<data>/admin.token`), `OPENBDR_CA` for a private certificate authority.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..errors import OpenBDRError

out = Console(width=None if sys.stdout.isatty() else 200)

ServerOpt = Annotated[str | None, typer.Option("--server", envvar="OPENBDR_SERVER",
                                               help="URL of the OpenBDR server.")]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="OPENBDR_TOKEN",
                                              help="API token.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

_conn: dict[str, str | None] = {}


def _connect(server: str | None, token: str | None) -> None:
    _conn["server"] = server
    _conn["token"] = token


def client() -> Any:
    from .client import Client

    server = _conn.get("server") or os.environ.get("OPENBDR_SERVER")
    if not server:
        raise OpenBDRError("no OpenBDR server configured",
                           "pass --server URL or set OPENBDR_SERVER (start one: openbdr server)")
    token = _conn.get("token") or os.environ.get("OPENBDR_TOKEN")
    if not token and os.environ.get("OPENBDR_TOKEN_FILE"):
        token = Path(os.environ["OPENBDR_TOKEN_FILE"]).read_text().strip()
    if not token:
        raise OpenBDRError("no API token", "pass --token or set OPENBDR_TOKEN")
    return Client(server, token, verify=os.environ.get("OPENBDR_CA") or True)


def seconds(text: str) -> int:
    """`300`, `5m`, `1h`, `7d` → seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not m:
        raise OpenBDRError(f"bad duration {text!r}", "write it like 300, 5m, 1h or 7d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[
        m.group(2)]


def _show(rows: list[dict[str, Any]], cols: list[str], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(*cols)
    for r in rows:
        table.add_row(*[("" if r.get(c) is None else str(r.get(c))) for c in cols])
    out.print(table)


def _group(help_text: str) -> typer.Typer:
    t = typer.Typer(no_args_is_help=True, help=help_text)

    @t.callback()
    def _cb(server: ServerOpt = None, token: TokenOpt = None) -> None:
        _connect(server, token)

    return t


target_app = _group("Repositories the server writes restore points to.")
host_app = _group("Protected hosts (on a server).")
policy_app = _group("Protection policies: RPO target, compression, bandwidth, schedules.")
job_app = _group("Jobs: list, start, pause, resume, cancel.")
point_app = _group("Restore points known to the server.")
alert_app = _group("Open alerts.")
user_app = _group("Users and API tokens (admin).")


# -- server -----------------------------------------------------------------------
def server_cmd(
    data: Annotated[Path, typer.Option("--data", envvar="OPENBDR_DATA",
                                       help="Data directory: catalog, key, admin token.")] =
    Path("/var/lib/openbdr"),
    database: Annotated[str | None, typer.Option(
        "--database", envvar="OPENBDR_DATABASE",
        help="postgresql://… (default: SQLite in the data directory).")] = None,
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT")] = "127.0.0.1:8470",
    cert: Annotated[str | None, typer.Option("--cert", help="TLS certificate (PEM).")] = None,
    key: Annotated[str | None, typer.Option("--key", help="TLS private key (PEM).")] = None,
    workers: Annotated[int, typer.Option(help="Embedded workers (0: agents only).")] = 2,
    processes: Annotated[int, typer.Option(
        min=1, help="Server processes on the one port (each with --workers workers): "
        "several cores for the API and the workers.")] = 1,
    tick: Annotated[float, typer.Option(help="Scheduler period, seconds.")] = 5.0,
    lease_ttl: Annotated[float, typer.Option(help="Job lease time-to-live, seconds.")] = 30.0,
    scheduler: Annotated[bool, typer.Option(help="Run the scheduler here.")] = True,
    keep_jobs_days: Annotated[float, typer.Option(
        min=0, help="Delete finished jobs and their logs this many days after they ended "
        "(0: keep them; a host's newest job of each kind always stays).")] = 7.0,
    migrate_only: Annotated[bool, typer.Option(help="Upgrade the catalog and exit.")] = False,
    repository_root: Annotated[list[Path] | None, typer.Option(
        "--repository-root",
        help="Allow local repositories only below this directory (repeatable; default: any).",
    )] = None,
) -> None:
    """Start the control plane: API, embedded workers and scheduler (all in one)."""
    from .app import ServerConfig, open_services
    from .server import serve

    config = ServerConfig(data, database, workers=workers, scheduler=scheduler, tick=tick,
                          lease_ttl=lease_ttl, repository_roots=tuple(repository_root or ()),
                          keep_jobs_days=keep_jobs_days)
    if migrate_only:
        open_services(config).engine.dispose()
        out.print(f"catalog {config.database_url.split('@')[-1]} is up to date")
        return
    host, _, port = listen.rpartition(":")
    if bool(cert) != bool(key):
        raise OpenBDRError("TLS needs both --cert and --key")
    serve(config, host or "127.0.0.1", int(port), cert, key, processes=processes)


# -- targets ----------------------------------------------------------------------
@target_app.command("add")
def target_add(
    name: str, url: str,
    init: Annotated[bool, typer.Option("--init", help="Create the repository.")] = False,
    secret: Annotated[list[str] | None, typer.Option("--secret", help="KEY=VALUE (encrypted).")]
    = None,
) -> None:
    """Add a repository (a directory or s3://bucket/prefix)."""
    secrets = dict(s.split("=", 1) for s in secret or [] if "=" in s)
    t = client().post("/targets", {"name": name, "url": url, "init": init,
                                   "secrets": secrets or None})
    out.print(f"target {t['name']} → {t['url']}")


@target_app.command("list")
def target_list(json_out: JsonOpt = False) -> None:
    _show(client().get("/targets"), ["name", "url", "has_secrets", "last_refresh"], json_out)


# -- hosts ------------------------------------------------------------------------
def _source(spec: str) -> dict[str, Any]:
    """`image:/a.img,/b.img` or a JSON object."""
    if spec.lstrip().startswith("{"):
        return dict(json.loads(spec))
    kind, _, rest = spec.partition(":")
    if kind == "image" and rest:
        return {"type": "image", "paths": [p for p in rest.split(",") if p]}
    raise OpenBDRError(f"bad source {spec!r}",
                       'write image:/path[,/path…] or a JSON object {"type": …}')


@host_app.command("add")
def host_add(
    name: str,
    target: Annotated[str, typer.Option("--target")],
    source: Annotated[str | None, typer.Option("--source", help="image:/path[,…] or JSON.")]
    = None,
    policy: Annotated[str | None, typer.Option("--policy")] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="Agent pool running its jobs.")]
    = None,
    platform: Annotated[str | None, typer.Option(
        "--platform", help="A VM of this platform (agentless; with --vm).")] = None,
    vm: Annotated[str | None, typer.Option("--vm", help="The VM's id or unique name.")] = None,
) -> None:
    """Protect a host: its source (or a platform's VM), target and policy."""
    if (platform is None) != (vm is None) or (platform is None) == (source is None):
        raise OpenBDRError(f"host {name}: give --source, or --platform and --vm",
                           "e.g. --source image:/var/lib/images/web1.img, or "
                           "--platform kvm1 --vm web1")
    body: dict[str, Any] = {"name": name, "target": target, "policy": policy, "pool": pool}
    if platform is not None:
        body.update(platform=platform, vm=vm)
        c = client()
        c.http.timeout = 120  # a VM not in the last discovery: the server discovers again
    else:
        body["source"] = _source(source or "")
        c = client()
    h = c.post("/hosts", body)
    if h.get("platform"):
        out.print(f"host {h['name']} added: VM {h['vm']} of platform {h['platform']} "
                  f"({h['status']['protection']})")
        return
    out.print(f"host {h['name']} added ({h['status']['protection']})")


def _host_row(h: dict[str, Any]) -> dict[str, Any]:
    st = h["status"]
    lp = st.get("last_point") or {}
    last = st.get("last_sync") or {}
    job = st.get("active_job") or {}
    return {"name": h["name"], "protection": st["protection"],
            "age_s": lp.get("age_seconds"), "rpo_s": st.get("rpo_seconds"),
            "points": st["points"], "last_sync": last.get("state"),
            "job": f"{job['kind']} {job['state']} {job.get('progress', {}).get('percent', '')}"
            if job else None, "policy": h["policy"], "target": h["target"]}


@host_app.command("list")
def host_list(json_out: JsonOpt = False) -> None:
    """Every host: restore-point age against its RPO target, last sync, running job."""
    hosts = client().get("/hosts")
    if json_out:
        _show(hosts, [], True)
        return
    _show([_host_row(h) for h in hosts],
          ["name", "protection", "age_s", "rpo_s", "points", "last_sync", "job", "policy",
           "target"], False)


@host_app.command("show")
def host_show(name: str) -> None:
    """One host as JSON: its set-up, protection against its RPO and newest point.

    Also its last sync and drill, running job and open alerts."""
    out.print_json(json.dumps(client().get(f"/hosts/{name}"), default=str))


@host_app.command("sync")
def host_sync(
    name: str,
    full: Annotated[bool, typer.Option("--full")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Follow the job with a progress bar until it ends (exit 1 if it fails).")
    ] = False,
) -> None:
    """Start a sync now."""
    c = client()
    j = c.post(f"/hosts/{name}/sync", {"full": full})
    out.print(f"job {j['id']}: sync of {name} {j['state']}")
    if wait:
        wait_for_job(c, int(j["id"]))


def wait_for_job(c: Any, job_id: int, poll: float = 0.5) -> dict[str, Any]:
    """Poll a job until it ends, drawing its progress; a failed or cancelled job exits 1."""
    import time

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    from .jobs import FINAL

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[state]}"), console=Console(stderr=True),
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(f"job {job_id}", total=100.0, state="")
        while True:
            j = c.get(f"/jobs/{job_id}")
            bar.update(task, completed=float(j["progress"].get("percent") or 0), state=j["state"])
            if j["state"] in FINAL:
                break
            time.sleep(poll)
    if j["state"] != "succeeded":
        raise OpenBDRError(f"job {job_id} {j['state']}: {j.get('error') or 'no reason given'}",
                           f"see `openbdr job show {job_id} --logs`")
    point = (j.get("result") or {}).get("point")
    if isinstance(point, dict) and point.get("disks"):
        disks = point["disks"]
        read = sum(d.get("read_bytes", 0) for d in disks) / 2**20
        stored = sum(d.get("stored_bytes", 0) for d in disks) / 2**20
        modes = ",".join(sorted({d.get("mode", "?") for d in disks}))
        out.print(f"job {job_id} succeeded: restore point {point['id']} ({modes}), read "
                  f"{read:.1f} MiB, stored {stored:.1f} MiB in {point.get('duration_s', 0):.1f} s")
    else:
        out.print(f"job {job_id} succeeded")
    return dict(j)


@host_app.command("remove")
def host_remove(name: str) -> None:
    """Forget a host (its restore points stay in the repository)."""
    client().delete(f"/hosts/{name}")
    out.print(f"host {name} removed from the catalog")


# -- policies ---------------------------------------------------------------------
@policy_app.command("set")
def policy_set(
    name: str,
    rpo: Annotated[str | None, typer.Option("--rpo", help="RPO target: 5m, 1h…")] = None,
    compression: Annotated[str | None, typer.Option(help="none, zstd or lz4.")] = None,
    level: Annotated[int | None, typer.Option(help="zstd level.")] = None,
    bwlimit: Annotated[str | None, typer.Option(help="Default bytes/s limit: 50M, 0.")] = None,
    window: Annotated[list[str] | None, typer.Option(
        "--window", help="HH:MM-HH:MM=RATE (UTC), e.g. 08:00-18:00=10M")] = None,
    full_every: Annotated[str | None, typer.Option(help="Full resync interval: 7d.")] = None,
    verify_every: Annotated[str | None, typer.Option(help="Verification interval: 1d.")]
    = None,
    drill_every: Annotated[str | None, typer.Option(help="Drill interval: 7d.")] = None,
    keep_last: Annotated[int | None, typer.Option(help="Retention: keep this many.")] = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled")] = None,
) -> None:
    """Create or change a policy (a paused sync uses new settings when resumed)."""
    from ..throttle import parse_rate

    body: dict[str, Any] = {}
    if rpo:
        body["rpo_seconds"] = seconds(rpo)
    if compression:
        body["compression"] = compression
    if level is not None:
        body["compression_level"] = level
    if bwlimit is not None:
        body["bwlimit"] = int(parse_rate(bwlimit))
    if window is not None:
        wins = []
        for w in window:
            m = re.fullmatch(r"(\d\d:\d\d)-(\d\d:\d\d)=(.+)", w)
            if not m:
                raise OpenBDRError(f"bad window {w!r}", "write it like 08:00-18:00=10M")
            wins.append({"start": m.group(1), "end": m.group(2),
                         "rate": int(parse_rate(m.group(3)))})
        body["bandwidth_windows"] = wins
    for key, val in (("full_resync_seconds", full_every), ("verify_seconds", verify_every),
                     ("drill_seconds", drill_every)):
        if val:
            body[key] = seconds(val)
    if keep_last is not None:
        body["retention"] = {"keep_last": keep_last}
    if enabled is not None:
        body["enabled"] = enabled
    c = client()
    from .client import ServerError

    try:
        p = c.patch(f"/policies/{name}", body)
        verb = "updated"
    except ServerError as exc:
        if "does not exist" not in str(exc):
            raise
        p = c.post("/policies", {"name": name, **body})
        verb = "created"
    out.print(f"policy {name} {verb}: RPO {p['rpo_seconds']} s, compression {p['compression']}")


@policy_app.command("list")
def policy_list(json_out: JsonOpt = False) -> None:
    _show(client().get("/policies"),
          ["name", "rpo_seconds", "compression", "bwlimit", "verify_seconds", "enabled"],
          json_out)


# -- jobs -------------------------------------------------------------------------
def _job_row(j: dict[str, Any]) -> dict[str, Any]:
    pr = j.get("progress") or {}
    return {**j, "percent": pr.get("percent"), "rate": pr.get("rate"), "eta": pr.get("eta")}


@job_app.command("list")
def job_list(
    state: Annotated[str | None, typer.Option(help="A state, or active.")] = None,
    host: Annotated[str | None, typer.Option("--host", "-H")] = None,
    kind: Annotated[str | None, typer.Option()] = None,
    json_out: JsonOpt = False,
) -> None:
    jobs = client().get("/jobs", state=state, host=host, kind=kind)
    _show([_job_row(j) for j in jobs] if not json_out else jobs,
          ["id", "kind", "host", "state", "percent", "rate", "eta", "attempts", "created",
           "error"], json_out)


@job_app.command("show")
def job_show(job_id: int, logs: Annotated[bool, typer.Option("--logs")] = False) -> None:
    """One job as JSON (state, progress, result); --logs adds its log lines."""
    c = client()
    out.print_json(json.dumps(c.get(f"/jobs/{job_id}"), default=str))
    if logs:
        for line in c.get(f"/jobs/{job_id}/logs"):
            out.print(f"{line['ts']} {line['level']}: {line['message']}", markup=False,
                      highlight=False)


@job_app.command("start")
def job_start(
    kind: str,
    host: Annotated[str | None, typer.Option("--host", "-H")] = None,
    target: Annotated[str | None, typer.Option("--target")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="KEY=JSON value.")] = None,
) -> None:
    """Start any job kind: restore, verify, sync (drill and gc when installed)."""
    params: dict[str, Any] = {}
    for p in param or []:
        k, _, v = p.partition("=")
        try:
            params[k] = json.loads(v)
        except ValueError:
            params[k] = v
    j = client().post("/jobs", {"kind": kind, "host": host, "target": target,
                                "params": params})
    out.print(f"job {j['id']}: {kind} {j['state']}")


def _act(action: str) -> Any:
    def cmd(job_id: int) -> None:
        j = client().post(f"/jobs/{job_id}/{action}")
        out.print(f"job {job_id}: {j['state']}")

    cmd.__doc__ = f"{action.capitalize()} a job."
    return cmd


for _a in ("pause", "resume", "cancel"):
    job_app.command(_a)(_act(_a))


# -- points, alerts, users ----------------------------------------------------------
@point_app.command("list")
def point_list(host: Annotated[str | None, typer.Option("--host", "-H")] = None,
               json_out: JsonOpt = False) -> None:
    _show(client().get("/points", host=host),
          ["host", "id", "created", "consistency", "status", "size", "stored_bytes", "codec",
           "verified"], json_out)


@alert_app.command("list")
def alert_list(json_out: JsonOpt = False) -> None:
    _show(client().get("/alerts"), ["id", "kind", "severity", "host", "message", "opened"],
          json_out)


@user_app.command("add")
def user_add(name: str, role: Annotated[str, typer.Option(help="viewer, operator, admin")],
             password: Annotated[str | None, typer.Option(envvar="OPENBDR_NEW_PASSWORD")]
             = None) -> None:
    u = client().post("/users", {"name": name, "role": role, "password": password})
    out.print(f"user {u['name']} ({u['role']})")


@user_app.command("token")
def user_token(user: str, name: Annotated[str, typer.Option()] = "cli") -> None:
    """Create an API token for a user; prints the secret once."""
    t = client().post("/tokens", {"user": user, "name": name})
    out.print(t["token"], markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Hook the control-plane commands into `openbdr`."""
    app.command("server")(server_cmd)
    app.add_typer(target_app, name="target")
    app.add_typer(host_app, name="host")
    app.add_typer(policy_app, name="policy")
    app.add_typer(job_app, name="job")
    app.add_typer(point_app, name="point")
    app.add_typer(alert_app, name="alert")
    app.add_typer(user_app, name="user")
    from .cli_platforms import platform_app

    app.add_typer(platform_app, name="platform")
