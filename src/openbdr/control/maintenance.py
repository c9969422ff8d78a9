"""Retention and garbage collection as jobs of the server (kinds `retention` and `gc`).

A policy's `retention` (JSON on the policy row) says what to keep and how often:

    {"keep_last": 3, "keep_daily": 7, ..., "every_seconds": 86400,
     "gc_every_seconds": 604800, "gc_margin_seconds": 3600}

`retention` runs per host (`every_seconds`, daily by default) and forgets the points
the `keep_*` counts do not keep; its `on_success` drops them from the points mirror at
once and queues a `gc` of the host's target. `gc` runs per target: after a retention
that forgot points, and every `gc_every_seconds` (weekly by default) when any policy of
the target's hosts has retention. Its margin (unreferenced chunks younger than this
stay) is the largest `gc_margin_seconds` that those policies set, else one hour.

The calls into the repository's maintenance (`forget`, `gc`) are in this module only.
Both take the repository's maintenance lease, so they wait here for each other (and for
a `openbdr gc` run by hand) instead of failing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ..errors import LockedError, OpenBDRError
from ..store.objects.gc import DEFAULT_MARGIN
from ..store.retention import Decision, forget
from ..store.retention import Policy as KeepPolicy
from ..store.target import GCReport
from .jobs import ACTIVE, JobError, enqueue
from .models import Host, Job, Point, Policy, Target
from .registry import JobKind, register_kind
from .worker import JobContext

T = TypeVar("T")

#: the policy's `retention` keys that count points to keep → `retention.Policy` fields
KEEP = {"keep_last": "last", "keep_hourly": "hourly", "keep_daily": "daily",
        "keep_weekly": "weekly", "keep_monthly": "monthly"}
RETENTION_EVERY = 86400
GC_EVERY = 7 * 86400
#: how long a job waits for the repository's maintenance lease before it is retried
LEASE_WAIT = 300.0


# -- the policy's retention settings ------------------------------------------------
def _count(settings: dict[str, Any], key: str) -> int:
    """A keep count; `last`, `daily`… are what consoles before the `keep_` names wrote."""
    value = settings.get(key, settings.get(KEEP[key]))
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def normalized(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The settings under today's names (`last` → `keep_last`), unknown keys dropped."""
    s = settings or {}
    out: dict[str, Any] = {k: _count(s, k) for k in KEEP if _count(s, k)}
    out.update({k: int(s[k]) for k in ("every_seconds", "gc_every_seconds", "gc_margin_seconds")
                if isinstance(s.get(k), int)})
    return out


def keep_policy(settings: dict[str, Any]) -> KeepPolicy:
    return KeepPolicy(**{field: _count(settings, key) for key, field in KEEP.items()})


def has_retention(settings: dict[str, Any] | None) -> bool:
    return bool(settings) and any(_count(settings or {}, k) > 0 for k in KEEP)


def retention_every(settings: dict[str, Any] | None) -> int | None:
    """Seconds between two retention runs of each host; None: the policy keeps everything."""
    if not has_retention(settings):
        return None
    return int((settings or {}).get("every_seconds") or RETENTION_EVERY)


def gc_every(settings: dict[str, Any] | None) -> int | None:
    """Seconds between two periodic gc runs of the target (None: only after retention)."""
    s = settings or {}
    if s.get("gc_every_seconds"):
        return int(s["gc_every_seconds"])
    return GC_EVERY if has_retention(s) else None


def target_margin(s: Session, target_id: int) -> float:
    """The largest margin that a policy of the target's hosts sets (the most careful
    wins), else gc's default (one hour)."""
    margins = [
        float(r["gc_margin_seconds"])
        for r in s.scalars(
            # no DISTINCT: PostgreSQL has no equality for the json type
            select(Policy.retention).join(Host, Host.policy_id == Policy.id)
            .where(Host.target_id == target_id))
        if isinstance(r, dict) and r.get("gc_margin_seconds") is not None
    ]
    return max(margins) if margins else DEFAULT_MARGIN


# -- runners (on a worker: the server's or an agent's) -----------------------------
def _under_lease(ctx: JobContext, what: str, fn: Callable[[], T]) -> T:
    """Run `fn`, waiting (up to LEASE_WAIT) while another maintenance job holds the
    repository's lease: the retention jobs of a target's hosts are due together."""
    deadline = time.monotonic() + LEASE_WAIT
    told = False
    while True:
        ctx.check_stop()
        try:
            return fn()
        except LockedError as exc:
            if "maintenance" not in str(exc) or time.monotonic() > deadline:
                raise
            if not told:
                ctx.log(f"{what} waits for the repository's maintenance lease: {exc}")
                told = True
            time.sleep(1.0)


def run_retention(ctx: JobContext) -> dict[str, Any]:
    spec = ctx.spec
    if not spec.host:
        raise OpenBDRError(f"retention job {spec.id} names no host")
    host = spec.host["name"]
    settings = spec.params.get("retention") or (spec.policy.get("retention") or {})
    keep = keep_policy(settings)
    try:
        keep.check()
    except OpenBDRError:
        raise OpenBDRError(
            f"policy {spec.policy.get('name', '?')} of host {host} keeps no restore points "
            "by count: retention would forget them all",
            "set at least one of --keep-last/--keep-hourly/--keep-daily/--keep-weekly/"
            "--keep-monthly on the policy",
        ) from None
    dry_run = bool(spec.params.get("dry_run", False))
    ctx.progress(percent=0.0)
    target = ctx.open_target()
    try:
        decisions: list[Decision] = _under_lease(
            ctx, "retention", lambda: forget(target, keep, host, dry_run=dry_run))
    finally:
        target.close()
    forgotten = [d.point.id for d in decisions if not d.keep]
    kept = [d.point.id for d in decisions if d.keep]
    verb = "would forget" if dry_run else "forgot"
    ctx.log(f"{verb} {len(forgotten)} restore point(s) of {host}, kept {len(kept)}"
            + (f": {', '.join(forgotten)}" if forgotten else ""))
    ctx.progress(percent=100.0)
    return {
        "host": host,
        "keep": {k: _count(settings, k) for k in KEEP if _count(settings, k)},
        "forgotten": forgotten,
        "kept": kept,
        "reasons": {d.point.id: d.reasons for d in decisions if d.keep},
        "dry_run": dry_run,
    }


def run_gc(ctx: JobContext) -> dict[str, Any]:
    spec = ctx.spec
    margin = float(spec.params.get("margin", DEFAULT_MARGIN))
    if margin < 0:
        raise OpenBDRError(f"gc job {spec.id}: margin {margin} is negative",
                           "give 0 or more seconds")
    dry_run = bool(spec.params.get("dry_run", False))
    ctx.progress(percent=0.0)
    target = ctx.open_target()
    try:
        report: GCReport = _under_lease(
            ctx, "gc", lambda: target.gc(margin=margin, dry_run=dry_run))
    finally:
        target.close()
    verb = "would delete" if dry_run else "deleted"
    ctx.log(f"{report.chunks} chunk(s), {report.referenced} referenced, {verb} "
            f"{report.deleted} ({report.deleted_bytes} bytes), {report.young} unreferenced "
            f"but younger than the margin ({margin:.0f} s), {report.indexes_deleted} orphan "
            "index(es) removed")
    ctx.progress(percent=100.0)
    return {**asdict(report), "margin": margin,
            "target": spec.target["name"] if spec.target else None}


# -- in the server ------------------------------------------------------------------
def retention_done(s: Session, job: Job, result: dict[str, Any]) -> None:
    """Forgotten points leave the mirror now (not at the next refresh), and the target
    gets a gc to reclaim their chunks."""
    forgotten = list(result.get("forgotten") or [])
    if result.get("dry_run") or not forgotten or not job.host_id:
        return
    s.execute(delete(Point).where(Point.host_id == job.host_id, Point.point_id.in_(forgotten)),
              execution_options={"synchronize_session": False})
    if job.target_id is not None:
        queue_gc(s, job.target_id, f"retention job {job.id}")


def gc_pending(s: Session, target_id: int) -> int | None:
    """A queued gc of the target: it has not marked yet, so it covers what was forgotten."""
    return s.scalar(select(Job.id).where(Job.kind == "gc", Job.target_id == target_id,
                                         Job.host_id.is_(None), Job.state == "queued"))


def queue_gc(s: Session, target_id: int, created_by: str = "scheduler") -> Job | None:
    if gc_pending(s, target_id) is not None:
        return None
    target = s.get(Target, target_id)
    if target is None:
        return None
    try:
        return enqueue(s, "gc", target=target, created_by=created_by)
    except JobError:
        return None


#: job kinds that read a host's restore points: retention waits while one runs
READERS = ("restore", "drill")


def retention_defaults(s: Session, host: Host | None, target: Target | None,
                       params: dict[str, Any]) -> dict[str, Any]:
    """Refuse (the scheduler tries again next tick) while a restore or drill of the host
    is active: it may be reading a point that retention would forget and gc reclaim."""
    if host is not None:
        busy = s.scalar(select(Job.id).where(Job.host_id == host.id, Job.kind.in_(READERS),
                                             Job.state.in_(ACTIVE)))
        if busy is not None:
            raise JobError(f"host {host.name} has a restore or drill job ({busy}) running",
                           f"retention runs once job {busy} has finished")
    return params


def gc_defaults(s: Session, host: Host | None, target: Target | None,
                params: dict[str, Any]) -> dict[str, Any]:
    """A gc started without a margin gets the target's (see `target_margin`)."""
    tid = target.id if target is not None else host.target_id if host is not None else None
    if "margin" not in params and tid is not None:
        params["margin"] = target_margin(s, tid)
    return params


def due_gc(s: Session, now: datetime) -> int:
    """The scheduler's periodic gc: each target whose hosts' policies ask for one."""
    every: dict[int, int] = {}
    for tid, settings in s.execute(
        select(Host.target_id, Policy.retention).join(Policy, Policy.id == Host.policy_id)
        .where(Host.enabled.is_(True), Policy.enabled.is_(True))
    ).all():
        seconds = gc_every(settings if isinstance(settings, dict) else None)
        if seconds:
            every[tid] = min(every.get(tid, seconds), seconds)
    if not every:
        return 0
    last = dict(s.execute(
        select(Job.target_id, func.max(Job.created))
        .where(Job.kind == "gc", Job.host_id.is_(None), Job.target_id.in_(list(every)))
        .group_by(Job.target_id)).all())
    started = 0
    for tid, seconds in sorted(every.items()):
        prev = last.get(tid)
        if prev is None or (now - prev).total_seconds() >= seconds:
            started += queue_gc(s, tid) is not None
    return started


def summary(kind: str, result: dict[str, Any]) -> str:
    """One line for `openbdr job list` (the console formats the same fields itself)."""
    if kind == "retention" and "forgotten" in result:
        verb = "would forget" if result.get("dry_run") else "forgot"
        return f"{verb} {len(result['forgotten'])}, kept {len(result.get('kept') or [])}"
    if kind == "gc" and "deleted" in result:
        verb = "would reclaim" if result.get("dry_run") else "reclaimed"
        return (f"{verb} {result['deleted']} chunk(s), {_mib(int(result['deleted_bytes']))}"
                f"; {result.get('young', 0)} kept by the margin")
    return ""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


register_kind(JobKind(
    "retention", run_retention, exclusive=True, on_success=retention_done,
    defaults=retention_defaults,
    description="forget the host's restore points its policy's retention does not keep",
))
register_kind(JobKind(
    "gc", run_gc, needs_host=False, defaults=gc_defaults,
    description="delete chunks no restore point references (after a safety margin)",
))
