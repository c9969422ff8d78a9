"""`openbdr …`: a thin command line over the layers below."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from . import __version__
from .agent.cli import register as register_agent
from .control.cli import register as register_control
from .drill.cli import drill_app, mount_cmd
from .errors import ExitCode, OpenBDRError
from .gateway.cli import gateway_app

app = typer.Typer(
    name="openbdr",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="OpenBDR: block-level disaster recovery with restore points proved by drills.",
)
repo_app = typer.Typer(no_args_is_help=True, help="Create and inspect repositories.")
app.add_typer(repo_app, name="repo")
app.add_typer(drill_app, name="drill")
app.add_typer(gateway_app, name="gateway")
app.command("mount")(mount_cmd)
register_control(app)
register_agent(app)  # after the control plane: joins its `agent` group

out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

RepoOpt = Annotated[
    str,
    typer.Option(
        "--repo", "-r", help="Repository: a directory or s3://bucket/prefix.", envvar="OPENBDR_REPO"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=not err.is_terminal,
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    password_file: Annotated[
        str | None,
        typer.Option("--password-file", help="File holding an encrypted repository's passphrase."),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error.")
    ] = False,
) -> None:
    if password_file:
        os.environ["OPENBDR_PASSWORD_FILE"] = password_file
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@repo_app.command("init")
def repo_init(
    repo: Annotated[str, typer.Argument(help="Directory or s3://bucket/prefix.")],
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help="Encrypt with AES-256-GCM under a passphrase.")
    ] = False,
    object_lock: Annotated[
        bool,
        typer.Option(
            "--object-lock",
            help="Immutable points: S3 Object Lock (the bucket must have it; a new one gets "
            "it), or the immutable attribute on a directory (ext4/XFS/btrfs, as root).",
        ),
    ] = False,
    lock_mode: Annotated[
        str | None,
        typer.Option(
            "--lock-mode",
            help="compliance or governance (default: compliance on S3; a directory is "
            "governance only: root on its host can clear the attribute).",
        ),
    ] = None,
    lock_days: Annotated[
        float, typer.Option("--lock-days", help="Days each point stays immutable.")
    ] = 30,
) -> None:
    """Create an empty repository."""
    from .store.objects.immutable import ObjectLock
    from .store.objects.repository import Repository

    if not object_lock and (lock_mode is not None or lock_days != 30):
        raise OpenBDRError("--lock-mode and --lock-days need --object-lock", "add --object-lock")
    mode = lock_mode or ("compliance" if repo.startswith("s3://") else "governance")
    lock = ObjectLock(mode.upper(), lock_days * 86400.0) if object_lock else None
    r = Repository.init(repo, encrypt=encrypt, object_lock=lock)
    extra = f" (points immutable for {lock_days:g} days, {lock.mode})" if lock else ""
    out.print(f"created repository {r.id} at {r.url}{extra}")


@repo_app.command("sync-policy")
def repo_sync_policy(
    repo: Annotated[str, typer.Argument(help="s3://bucket/prefix of the repository.")],
    principal: Annotated[
        list[str],
        typer.Option(
            "--principal",
            help="ARN of the write-only role, e.g. arn:aws:iam:::user/owner:sync (RGW subuser).",
        ),
    ],
    apply: Annotated[
        bool, typer.Option("--apply", help="Set it as the bucket's policy (replaces it).")
    ] = False,
) -> None:
    """Print (or set) the bucket policy that makes sync credentials write-only."""
    from urllib.parse import urlparse

    from .store.objects.immutable import sync_role_policy

    u = urlparse(repo)
    if u.scheme != "s3" or not u.netloc:
        raise OpenBDRError(f"{repo} is not an S3 repository", "give s3://bucket/prefix")
    policy = json.dumps(sync_role_policy(u.netloc, u.path, principal), indent=1)
    if not apply:
        out.print(policy, highlight=False, markup=False, soft_wrap=True)
        return
    from .store.s3 import S3Blobs

    S3Blobs(repo).client.put_bucket_policy(Bucket=u.netloc, Policy=policy)
    out.print(f"bucket {u.netloc}: write-only policy set for {', '.join(principal)}")


@repo_app.command("repair")
def repo_repair(
    repo: RepoOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be done.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild damaged manifests from their indexes; remove bookkeeping nobody can read."""
    from .store.objects.repair import repair
    from .store.objects.repository import Repository

    rep = repair(Repository.open(repo), dry_run=dry_run)
    if json_out:
        out.print_json(json.dumps(vars(rep)))
    else:
        verb = "would rebuild" if dry_run else "rebuilt"
        for line in rep.rebuilt:
            out.print(f"{verb} {line}", highlight=False, markup=False)
        for line in rep.removed:
            out.print(f"{'would remove' if dry_run else 'removed'} {line}", highlight=False)
        for line in rep.failed:
            err.print(f"cannot repair {line}", highlight=False, markup=False, soft_wrap=True)
        if not (rep.rebuilt or rep.removed or rep.failed):
            out.print("nothing to repair (damaged chunks: run `openbdr verify --deep`)")
    if rep.failed:
        raise typer.Exit(ExitCode.DAMAGED)


@app.command("sync")
def sync_cmd(
    repo: RepoOpt,
    host: Annotated[str, typer.Option("--host", "-H", help="Name of the protected host.")],
    sources: Annotated[
        list[str] | None, typer.Argument(help="Disk images or block devices (source image).")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source", help='Another source: TYPE:ARG or a JSON spec ({"type": …}).'
        ),
    ] = None,
    compress: Annotated[str, typer.Option("--compress", "-c", help="zstd, lz4 or none.")] = "none",
    level: Annotated[int, typer.Option(help="Compression level (zstd).")] = 1,
    bwlimit: Annotated[str, typer.Option(help="Limit on bytes sent, e.g. 50M (per second).")] = "0",
    full: Annotated[
        bool, typer.Option("--full", help="Ignore earlier points: a full pass.")
    ] = False,
    all_data: Annotated[
        bool,
        typer.Option("--all-data", help="Copy all non-hole data, not only what file systems use."),
    ] = False,
    threads: Annotated[int, typer.Option(help="Worker threads.")] = 0,
    checkpoint_interval: Annotated[
        float, typer.Option(help="Seconds between checkpoints a killed sync resumes from.")
    ] = 10.0,
    json_out: JsonOpt = False,
) -> None:
    """Sync disks to a new restore point (full first, then only what differs)."""
    from .capture.registry import open_source, parse_spec
    from .chunk import Codec
    from .store.manifest import check_host_name
    from .store.target import open_target
    from .sync import SyncOptions, sync
    from .throttle import parse_rate

    check_host_name(host)
    options = SyncOptions(
        compression=Codec.parse(compress),
        level=level,
        bwlimit=parse_rate(bwlimit),
        full=full,
        checkpoint_every=checkpoint_interval,
    )
    if threads > 0:
        options.threads = threads
    if bool(sources) == bool(source):
        raise OpenBDRError(
            "name the disks to sync: image paths, or --source", "give one of them, not both"
        )
    if source:
        spec = json.loads(source) if source.lstrip().startswith("{") else parse_spec(source)
    else:
        spec = {"type": "image", "paths": sources}
    if all_data:
        spec["valid_only"] = False
    r = open_target(repo)
    src = open_source(host, spec)
    with _bar() as bar:
        task = bar.add_task(f"sync {host}", total=None)

        def on_progress(p: Any) -> None:
            bar.update(task, total=p.total_bytes, completed=p.done_bytes)

        point = sync(r, src, options, on_progress)
    rec = point.summary()
    if json_out:
        out.print_json(json.dumps({**rec, "disks": [vars(d) for d in point.disks]}))
        return
    read = sum(d.read_bytes for d in point.disks)
    stored = sum(d.stored_bytes for d in point.disks)
    valid = sum(d.valid_bytes for d in point.disks)
    out.print(
        f"restore point {point.id} of {host}: {len(point.disks)} disk(s), "
        f"{_size(rec['size'])}, valid {_size(valid)}, read {_size(read)}, "
        f"stored {_size(stored)} in {point.duration_s:.1f} s ({rec['mode']})"
    )
    for d in point.disks:
        if d.fallback_reason:
            out.print(f"  {d.name}: {d.mode}; fallback: {d.fallback_reason}")
    for note in point.notes:
        out.print(f"  note: {note}", highlight=False, markup=False)


@app.command()
def points(
    repo: RepoOpt,
    host: Annotated[str | None, typer.Option("--host", "-H")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List restore points (with --json, per disk: bytes valid, read, zero and stored, the
    freeze windows and why a pass fell back, as `disk_stats`)."""
    from .store.target import open_target

    pts = open_target(repo).points(host)
    rows = [p.summary() for p in pts]
    if json_out:
        from .control.mirror import point_json

        for row, p in zip(rows, pts, strict=True):
            row["disk_stats"] = [
                {k: v for k, v in d.items() if k != "layout"} for d in point_json(p)["disks"]
            ]
        out.print_json(json.dumps(rows))
        return
    locks = any(r["locked_until"] for r in rows)  # an Object Lock repository
    notes = any(r["notes"] for r in rows)  # how the snapshot was taken (quiesce outcome)
    table = Table(
        "host", "point", "created", "consistency", "status", "disks", "size", "stored", "mode",
        *(["locked until"] if locks else []),
        *(["notes"] if notes else []),
    )
    for r in rows:
        table.add_row(
            r["host"],
            r["id"],
            r["created"],
            r["consistency"],
            r["status"],
            str(r["disks"]),
            _size(r["size"]),
            _size(r["stored_bytes"]),
            r["mode"],
            *([str(r["locked_until"] or "")[:19]] if locks else []),
            *(["; ".join(r["notes"])] if notes else []),
        )
    out.print(table)


@app.command()
def restore(
    repo: RepoOpt,
    host: Annotated[str, typer.Option("--host", "-H")],
    to: Annotated[
        str, typer.Option("--to", help="File, block device, or directory for all disks.")
    ],
    point: Annotated[
        str, typer.Option("--point", "-p", help="Point id, unique prefix or latest.")
    ] = "latest",
    disk: Annotated[int | None, typer.Option("--disk", help="Only this disk (index).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a non-empty target.")] = False,
) -> None:
    """Write a restore point's disks to files or block devices."""
    from .restore import restore as do_restore
    from .store.target import open_target

    r = open_target(repo)
    p = r.point(host, point)
    with _bar() as bar:
        task = bar.add_task(f"restore {p.id}", total=None)
        results = do_restore(
            r,
            p,
            to,
            disk=disk,
            force=force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    for res in results:
        out.print(f"restored {res.disk} of {host} point {p.id} to {res.path} ({_size(res.size)})")


@app.command()
def verify(
    repo: RepoOpt,
    host: Annotated[str | None, typer.Option("--host", "-H")] = None,
    deep: Annotated[bool, typer.Option("--deep", help="Read, decode and re-hash chunks.")] = False,
    sample: Annotated[
        float, typer.Option(help="Percentage of chunks to read with --deep.")
    ] = 100.0,
    json_out: JsonOpt = False,
) -> None:
    """Check that restore points are complete (and, with --deep, intact)."""
    from .store.target import open_target

    r = open_target(repo)
    with _bar(transient=True) as bar:
        task = bar.add_task("verify", total=None)
        report = r.verify(
            host=host,
            deep=deep,
            sample=sample,
            progress=lambda n, t: bar.update(task, completed=n, total=t),
        )
    if json_out:
        out.print_json(
            json.dumps(
                {
                    "ok": report.ok,
                    "points": report.points,
                    "chunks_referenced": report.chunks_referenced,
                    "chunks_checked": report.chunks_checked,
                    "problems": [vars(p) for p in report.problems],
                }
            )
        )
    else:
        for prob in report.problems:
            err.print(f"BAD {prob}", highlight=False, markup=False)
        out.print(
            f"{report.points} point(s), {report.chunks_referenced} chunk(s) referenced, "
            f"{report.chunks_checked} checked deeply: "
            + ("OK" if report.ok else f"{len(report.problems)} problem(s)")
        )
    if not report.ok:
        raise typer.Exit(ExitCode.DAMAGED)


@app.command()
def inspect(
    source: Annotated[str, typer.Argument(help="Disk image or block device.")],
    json_out: JsonOpt = False,
) -> None:
    """Show a disk's partitions, file systems and used bytes, and what a sync reads."""
    from .capture.image import ImageDisk
    from .volume import render_text

    disk = ImageDisk("disk0", source, valid_only=True)
    try:
        list(disk.extents())  # exactly what a full sync reads: valid data, holes left out
        layout = disk.analysis
        reads = disk.valid_bytes
    finally:
        disk.close()
    if json_out:
        out.print_json(json.dumps({**(disk.layout or {}), "sync_valid_bytes": reads}))
        return
    if layout is not None:
        out.print(render_text(layout), highlight=False, markup=False)
    out.print(
        f"a full sync reads {_size(reads or 0)} ({reads} bytes: the valid data above that "
        "is not a hole in the image; `sync` reports it as valid)",
        highlight=False,
    )
    if disk.fallback_reason:
        out.print(f"note: {disk.fallback_reason}", highlight=False, markup=False)


key_app = typer.Typer(no_args_is_help=True, help="Passphrases (key slots) of an encrypted repository.")
repo_app.add_typer(key_app, name="key")
NewPassOpt = Annotated[
    str | None,
    typer.Option("--new-password-file", help="File holding the new passphrase."),
]


def _unlocked(repo: str) -> tuple[Any, str]:
    """An encrypted repository and the key slot its passphrase opened."""
    from .store.objects import keys
    from .store.objects.repository import Repository

    r = Repository.open(repo)
    if r.keys is None:
        raise OpenBDRError(f"{r.url} is not encrypted", "it has no passphrases to manage")
    _, slot = keys.unlock(r.raw_blobs, r.id, keys.read_passphrase())
    return r, slot


def _new_passphrase(path: str | None) -> str:
    from .store.objects import keys

    if path:
        os.environ["OPENBDR_NEW_PASSWORD_FILE"] = path
    return keys.read_passphrase(new=True, confirm=True)


@key_app.command("list")
def key_list(repo: RepoOpt) -> None:
    """List key slots (the one your passphrase opens is marked)."""
    from .store.objects import keys

    r, mine = _unlocked(repo)
    for s in keys.slots(r.raw_blobs):
        mark = "*" if s["slot"] == mine else " "
        out.print(f"{mark} {s['slot']}  scrypt n={s['n']}  created {s.get('created', '?')}")


@key_app.command("add")
def key_add(repo: RepoOpt, new_password_file: NewPassOpt = None) -> None:
    """Add a passphrase (a new key slot wrapping the same master key)."""
    from .store.objects import keys

    r, _ = _unlocked(repo)
    slot = keys.add_slot(r.raw_blobs, r.id, r.keys, _new_passphrase(new_password_file))
    out.print(f"added key slot {slot}")


@key_app.command("remove")
def key_remove(repo: RepoOpt, slot: Annotated[str, typer.Argument(help="Slot id.")]) -> None:
    """Remove a key slot (never the last one)."""
    from .store.objects import keys

    r, _ = _unlocked(repo)
    keys.remove_slot(r.raw_blobs, slot)
    out.print(f"removed key slot {slot}")


@key_app.command("rotate-passphrase")
def key_rotate(repo: RepoOpt, new_password_file: NewPassOpt = None) -> None:
    """Replace the passphrase you opened with by a new one (data is not re-encrypted)."""
    from .store.objects import keys

    r, old = _unlocked(repo)
    slot = keys.add_slot(r.raw_blobs, r.id, r.keys, _new_passphrase(new_password_file))
    keys.remove_slot(r.raw_blobs, old)
    out.print(f"key slot {old} replaced by {slot}")


@app.command()
def forget(
    repo: RepoOpt,
    host: Annotated[str | None, typer.Option("--host", "-H", help="Only this host.")] = None,
    keep_last: Annotated[int, typer.Option("--keep-last")] = 0,
    keep_hourly: Annotated[int, typer.Option("--keep-hourly")] = 0,
    keep_daily: Annotated[int, typer.Option("--keep-daily")] = 0,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly")] = 0,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the decision.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove restore points a retention policy does not keep (per host; chunks go at gc)."""
    from .store.retention import Policy
    from .store.retention import forget as do_forget
    from .store.target import open_target

    policy = Policy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly)
    decisions = do_forget(open_target(repo), policy, host, dry_run=dry_run)
    rows = [
        {"host": d.point.host, "id": d.point.id, "created": d.point.created,
         "keep": d.keep, "reasons": d.reasons}
        for d in decisions
    ]
    if json_out:
        out.print_json(json.dumps({"dry_run": dry_run, "points": rows}))
        return
    for row in rows:
        verdict = "keep  " if row["keep"] else ("would forget" if dry_run else "forget")
        why = ",".join(str(r) for r in row["reasons"])  # type: ignore[attr-defined]
        out.print(f"{verdict} {row['host']} {row['id']} {row['created']} {why}", highlight=False)
    gone = sum(not r["keep"] for r in rows)
    out.print(f"{len(rows) - gone} kept, {gone} {'to forget' if dry_run else 'forgotten'}")


def _password(path: str | None) -> str | None:
    from .store.objects.keys import read_password_file

    return None if path is None else read_password_file(path)


@app.command("copy")
def copy_cmd(
    from_url: Annotated[str, typer.Option("--from", help="Source repository or target.")],
    to_url: Annotated[str, typer.Option("--to", help="Destination repository or target.")],
    host: Annotated[
        str | None, typer.Option("--host", "-H", help="Only this host (default: every one).")
    ] = None,
    point: Annotated[
        str | None, typer.Option("--point", "-p", help="Only this point (id, prefix, latest).")
    ] = None,
    from_password_file: Annotated[
        str | None, typer.Option("--from-password-file", help="Passphrase of the source.")
    ] = None,
    to_password_file: Annotated[
        str | None, typer.Option("--to-password-file", help="Passphrase of the destination.")
    ] = None,
    compression: Annotated[
        str | None, typer.Option(help="Destination codec (default: the point's).")
    ] = None,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Destination retention.")] = 0,
    keep_hourly: Annotated[int, typer.Option("--keep-hourly")] = 0,
    keep_daily: Annotated[int, typer.Option("--keep-daily")] = 0,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly")] = 0,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Copy restore points to a second site: those newer than the destination's newest
    copy (resumable; read back at the destination); then apply --keep-* there."""
    from .chunk import Codec
    from .store.copy import copy_host
    from .store.retention import Policy
    from .store.retention import forget as do_forget
    from .store.target import open_target

    if point is not None and host is None:
        raise OpenBDRError("--point needs --host", "name the host of the point")
    src = open_target(from_url, passphrase=_password(from_password_file))
    dst = open_target(to_url, passphrase=_password(to_password_file))
    codec = Codec.parse(compression) if compression else None
    policy = Policy(keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly)
    rows = []
    for h in [host] if host else src.hosts():
        rep = copy_host(src, dst, h, point=point, compression=codec)
        forgotten = 0
        if any((keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly)):
            forgotten = sum(not d.keep for d in do_forget(dst, policy, h))
        rows.append({"host": h, **vars(rep), "forgotten": forgotten})
    if json_out:
        out.print_json(json.dumps({"hosts": rows}))
    else:
        for r in rows:
            out.print(
                f"{r['host']}: {len(r['copied'])} point(s) copied, {r['present']} already there, "
                f"{r['blocks_read']} block(s) read, {r['chunks_stored']} chunk(s) stored "
                f"({_size(r['stored_bytes'])}), {r['verified_blocks']} read back"
                + (f", {r['forgotten']} forgotten at the destination" if r["forgotten"] else ""),
                highlight=False,
            )
    failed = [f for r in rows for f in r["failed"]]
    if failed:
        raise OpenBDRError(f"{len(failed)} point(s) not copied: {failed[0]}", "see `verify`")


@app.command()
def protect(
    repo: RepoOpt,
    host: Annotated[str, typer.Option("--host", "-H")],
    point: Annotated[str, typer.Option("--point", "-p", help="Point id, prefix or latest.")],
    off: Annotated[bool, typer.Option("--off", help="Remove the protection.")] = False,
) -> None:
    """Keep a restore point whatever the retention policy says (or stop keeping it)."""
    from .store.target import open_target

    p = open_target(repo).protect(host, point, not off)
    out.print(f"{host} point {p.id} {'unprotected' if off else 'protected'}")


@app.command("gc")
def gc_cmd(
    repo: RepoOpt,
    margin: Annotated[
        float, typer.Option(help="Seconds: unreferenced chunks younger than this are kept.")
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete chunks no restore point, checkpoint or running sync references."""
    from .store.target import open_target

    if margin < 0:
        raise OpenBDRError(f"bad --margin {margin}", "give 0 or more seconds")
    rep = open_target(repo).gc(margin=margin, dry_run=dry_run)
    if json_out:
        out.print_json(json.dumps(vars(rep)))
        return
    verb = "would delete" if dry_run else "deleted"
    out.print(
        f"{rep.chunks} chunk(s), {rep.referenced} referenced, {verb} {rep.deleted} "
        f"({_size(rep.deleted_bytes)}), {rep.young} unreferenced but younger than the margin, "
        f"{rep.indexes_deleted} orphan index(es) removed"
        + (f", {rep.locked} kept under a lock" if rep.locked else "")
        + (f", {rep.unlocked} lock(s) expired and cleared" if rep.unlocked else "")
        + (f", {rep.relocked} object(s) of immutable points found unlocked and locked"
           if rep.relocked else "")
    )


def run(argv: list[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and an exit code of the table
    in docs/errors.md (a traceback only with --debug)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("OPENBDR_DEBUG") == "1"
    try:
        app(args=args, prog_name="openbdr")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else ExitCode.FAILED)
    except OpenBDRError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"openbdr: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("openbdr: interrupted; a sync resumes from its checkpoint when run again")
        return 130
    except BrokenPipeError:
        os._exit(ExitCode.FAILED)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        err.print(
            f"openbdr: internal error: {type(exc).__name__}: {exc} (a bug: please report it "
            "with the output of the same command run as `openbdr --debug …`)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        return ExitCode.FAILED
    return ExitCode.OK


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
