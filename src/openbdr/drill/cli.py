"""`openbdr drill …` and `openbdr mount`: thin commands over the drill package."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import ExitCode

drill_app = typer.Typer(
    no_args_is_help=True, help="DR drills: boot restore points in isolation, probe, report."
)
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

RepoOpt = Annotated[
    str,
    typer.Option(
        "--repo", "-r", help="Target: a directory or s3://bucket/prefix.", envvar="OPENBDR_REPO"
    ),
]
HostOpt = Annotated[str, typer.Option("--host", "-H", help="Host whose point to drill.")]
PointOpt = Annotated[str, typer.Option("--point", "-p", help="Point id, unique prefix or latest.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _wait_for_signal() -> None:
    """Block until SIGINT/SIGTERM; teardown then runs in the caller's `with`."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@drill_app.command("run")
def run_cmd(
    repo: RepoOpt,
    host: HostOpt,
    plan: Annotated[Path, typer.Option("--plan", help="Drill plan (TOML).")],
    point: PointOpt = "latest",
    accel: Annotated[
        str | None, typer.Option("--accel", help="Force kvm or tcg (default: probe).")
    ] = None,
    no_mark: Annotated[
        bool, typer.Option("--no-mark", help="Do not mark the point verified.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Drill a restore point; exit 0 only when every check and probe passed."""
    from ..store.target import open_target
    from .plan import load_plan
    from .runner import DrillOptions, run_drill

    p = load_plan(plan)
    r = open_target(repo)

    def say(msg: str) -> None:
        err.print(msg, highlight=False, markup=False)

    signal.signal(signal.SIGTERM, _interrupt)  # the same path as Ctrl-C: teardown runs
    rep = run_drill(r, host, point, p, DrillOptions(not no_mark, accel, None if json_out else say))
    if json_out:
        out.print_json(json.dumps(rep.to_json()))
    else:
        rto = f"{rep.rto_first_s:.1f} s" if rep.rto_first_s is not None else "—"
        rto_all = f"{rep.rto_all_s:.1f} s" if rep.rto_all_s is not None else "—"
        out.print(
            f"drill {rep.id} of {host} point {rep.point}: {rep.verdict.upper()} "
            f"(RTO first probe {rto}, all probes {rto_all}; {rep.reason})",
            highlight=False,
            markup=False,
        )
        out.print(f"report: openbdr drill report --repo {repo} {rep.id}", highlight=False)
    if rep.verdict != "passed":  # a point that failed its drill is not recoverable as it is
        raise typer.Exit(ExitCode.DAMAGED if rep.verdict == "failed" else ExitCode.FAILED)


@drill_app.command("report")
def report_cmd(
    repo: RepoOpt,
    drill_id: Annotated[str, typer.Argument(help="Drill id (or unique prefix).")],
    host: Annotated[str | None, typer.Option("--host", "-H")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML page here.")] = None,
    screenshot: Annotated[
        Path | None, typer.Option("--screenshot", help="Write the screenshot PNG here.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a stored drill report (needs only the repository)."""
    from ..store.target import open_target
    from .report import find_report, get_artifact, load_report

    r = open_target(repo)
    h, d = find_report(r, drill_id, host)
    rep = load_report(r, h, d)
    if html:
        html.write_bytes(get_artifact(r, h, d, "report.html"))
    if screenshot:
        screenshot.write_bytes(get_artifact(r, h, d, "screenshot.png"))
    if json_out:
        out.print_json(json.dumps(rep.to_json()))
        return
    out.print(
        f"drill {rep.id} of {rep.host} point {rep.point}: {rep.verdict.upper()}",
        highlight=False,
        markup=False,
    )
    out.print(f"  {rep.reason}", highlight=False, markup=False)
    out.print(
        f"  started {rep.started}, {rep.duration_s:.1f} s; accel "
        f"{rep.accel.get('name', '-')}; RTO first {rep.rto_first_s}, all {rep.rto_all_s}",
        highlight=False,
        markup=False,
    )
    for c in rep.checks + rep.probes:
        mark = "PASS" if c["ok"] else "FAIL"
        out.print(
            f"  {mark} {c['type']:<10} {c['name']}: {c['detail']}", highlight=False, markup=False
        )


@drill_app.command("list")
def list_cmd(
    repo: RepoOpt,
    host: Annotated[str | None, typer.Option("--host", "-H")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List stored drill reports, oldest first."""
    from ..store.target import open_target
    from .report import list_reports, load_report

    r = open_target(repo)
    reps = [load_report(r, h, d) for h, d in list_reports(r, host)]
    if json_out:
        out.print_json(
            json.dumps(
                [
                    {
                        "id": x.id,
                        "host": x.host,
                        "point": x.point,
                        "verdict": x.verdict,
                        "started": x.started,
                        "rto_first_s": x.rto_first_s,
                    }
                    for x in reps
                ]
            )
        )
        return
    for x in reps:
        out.print(
            f"{x.id}  {x.host}  {x.point}  {x.verdict:<7} {x.reason}", highlight=False, markup=False
        )


@drill_app.command("cleanup")
def cleanup_cmd() -> None:
    """Tear down what killed drill runners left behind (also done before every drill)."""
    from .state import clean_orphans

    ids = clean_orphans()
    out.print(f"cleaned {len(ids)} orphaned drill(s)" + (f": {', '.join(ids)}" if ids else ""))


@drill_app.command("accel")
def accel_cmd(
    refresh: Annotated[bool, typer.Option("--refresh", help="Probe again.")] = False,
) -> None:
    """Say which accelerator drills use here (KVM only if a probe guest really runs)."""
    from .accel import choose_accel

    a = choose_accel(refresh=refresh)
    out.print(f"{a.name}: {a.reason}", highlight=False, markup=False)


@drill_app.command("serve")
def serve_cmd(
    repo: RepoOpt,
    host: HostOpt,
    point: PointOpt = "latest",
    socket_path: Annotated[
        str | None, typer.Option("--socket", help="Unix socket (default: TCP 127.0.0.1).")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="TCP port on 127.0.0.1 (0: any).")] = 0,
    overlay: Annotated[
        bool, typer.Option("--overlay", help="Accept writes into a throwaway overlay.")
    ] = False,
) -> None:
    """Instant access: serve a point's disks over NBD until interrupted."""
    from ..store.target import open_target
    from .image import CowImage, Image, PointImage
    from .nbd import NbdServer

    r = open_target(repo)
    p = r.point(host, point)
    images: dict[str, Image] = {}
    for d in p.disks:
        img: Image = PointImage(r.reader(p, d))
        images[d.name] = CowImage(img) if overlay else img
    with NbdServer(images, unix_path=socket_path, port=port) as srv:
        for name in images:
            out.print(srv.uri(name), highlight=False)
        sys.stdout.flush()
        _wait_for_signal()


def mount_cmd(
    repo: RepoOpt,
    host: HostOpt,
    mountpoint: Annotated[Path, typer.Argument(help="Empty directory to mount on.")],
    point: PointOpt = "latest",
    disk: Annotated[str | None, typer.Option("--disk", help="Disk index or name.")] = None,
    volume: Annotated[
        str | None, typer.Option("--volume", help="Partition number or label.")
    ] = None,
) -> None:
    """Read-only file access to a restore point, until interrupted (Ctrl-C unmounts)."""
    from ..store.target import open_target
    from .mount import mount_point

    r = open_target(repo)
    p = r.point(host, point)
    with mount_point(r, p, mountpoint, disk=disk, volume=volume) as info:
        out.print(
            f"mounted {info} of {host} point {p.id} read-only on {mountpoint}; Ctrl-C to unmount",
            highlight=False,
            markup=False,
        )
        sys.stdout.flush()
        _wait_for_signal()
