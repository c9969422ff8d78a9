"""The built-in job kinds (sync, restore, verify).

Each runner works from its `JobContext` alone, so it runs the same in the server and
in a remote agent; the `on_success` hooks run in the server and update the catalog.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..chunk import Codec
from ..errors import OpenBDRError
from ..restore import restore
from ..sync import Progress, SyncOptions, sync
from . import alerts
from .mirror import point_json, upsert_point
from .models import Host, Job, Point, utcnow
from .platforms import sync_failed, sync_succeeded
from .registry import JobKind, register_kind
from .worker import JobContext, JobStopped


def _parse_hhmm(value: str) -> time:
    h, m = value.split(":")
    return time(int(h), int(m))


def current_rate(policy: dict[str, Any], now: datetime | None = None) -> float:
    """Bytes/s allowed now: the first matching window (UTC, may wrap midnight), else bwlimit."""
    t = (now or datetime.now(UTC)).time()
    for w in policy.get("bandwidth_windows") or []:
        start, end = _parse_hhmm(w["start"]), _parse_hhmm(w["end"])
        inside = start <= t < end if start <= end else (t >= start or t < end)
        if inside:
            return float(w["rate"])
    return float(policy.get("bwlimit") or 0)


def _created(value: str) -> datetime:
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# -- sync ---------------------------------------------------------------------------
def run_sync(ctx: JobContext) -> dict[str, Any]:
    spec = ctx.spec
    host_name = spec.host["name"] if spec.host else ""
    target = ctx.open_target()
    try:
        if spec.attempt > 1 and spec.first_started:
            # an earlier attempt may have committed just before its worker died
            first = datetime.fromisoformat(spec.first_started).replace(microsecond=0)
            latest = target.latest(host_name)
            if latest is not None and _created(latest.created) >= first:
                ctx.log(f"an earlier attempt committed point {latest.id}: adopting it")
                return {"point": point_json(latest), "adopted": True}
        policy = spec.policy
        options = SyncOptions(
            compression=Codec.parse(policy.get("compression") or "none"),
            level=int(policy.get("compression_level") or 1),
            bwlimit=current_rate(policy),
            full=bool(spec.params.get("full", False)),
            should_stop=ctx.should_stop,
        )
        if spec.params.get("checkpoint_every"):
            options.checkpoint_every = float(spec.params["checkpoint_every"])
        if spec.params.get("threads"):
            options.threads = int(spec.params["threads"])
        ctx.log(
            f"sync of {host_name} (compression {options.compression.name.lower()}, "
            f"limit {options.bwlimit:.0f} B/s, attempt {spec.attempt})"
        )
        source = ctx.open_source()

        def on_progress(p: Progress) -> None:
            ctx.progress(
                disk=p.disk,
                total_bytes=p.total_bytes,
                done_bytes=p.done_bytes,
                read_bytes=p.read_bytes,
                stored_bytes=p.stored_bytes,
                zero_bytes=p.zero_bytes,
                reused_bytes=p.reused_bytes,
                rate=round(p.rate),
                eta=round(p.eta, 1) if p.eta is not None else None,
                percent=round(100.0 * p.done_bytes / p.total_bytes, 1) if p.total_bytes else 0,
                compression=options.compression.name.lower(),
            )

        point = sync(target, source, options, on_progress)
        ctx.progress(percent=100.0)
        ctx.log(f"committed restore point {point.id}")
        return {"point": point_json(point), "adopted": False}
    finally:
        target.close()


def sync_done(s: Session, job: Job, result: dict[str, Any]) -> None:
    host = s.get(Host, job.host_id) if job.host_id else None
    if host is not None and result.get("point"):
        sync_succeeded(s, host, job, result["point"])  # compares with host.disks: first
        upsert_point(s, host, result["point"])


# -- restore --------------------------------------------------------------------------
def run_restore(ctx: JobContext) -> dict[str, Any]:
    spec = ctx.spec
    params = spec.params
    if not params.get("to"):
        raise OpenBDRError(f"restore job {spec.id} has no destination", "give params.to")
    target = ctx.open_target()
    try:
        point = target.point(spec.host["name"] if spec.host else "", params.get("point", "latest"))

        def on_progress(done: int, total: int) -> None:
            ctx.check_stop()
            ctx.progress(done_bytes=done, total_bytes=total,
                         percent=round(100.0 * done / total, 1) if total else 0)

        results = restore(
            target, point, str(params["to"]), disk=params.get("disk"),
            force=bool(params.get("force", False)), progress=on_progress,
        )
        return {"point": point.id, "disks": [asdict(r) for r in results]}
    finally:
        target.close()


# -- verify ---------------------------------------------------------------------------
def run_verify(ctx: JobContext) -> dict[str, Any]:
    spec = ctx.spec
    target = ctx.open_target()
    try:
        def on_progress(done: int, total: int) -> None:
            if ctx.should_stop():
                raise JobStopped(f"job {spec.id} stopped ({ctx.stop_reason})")
            ctx.progress(done=done, total=total,
                         percent=round(100.0 * done / total, 1) if total else 0)

        report = target.verify(
            host=spec.host["name"] if spec.host else None,
            deep=bool(spec.params.get("deep", False)),
            sample=float(spec.params.get("sample", 100.0)),
            progress=on_progress,
        )
        return {
            "ok": report.ok,
            "points": report.points,
            "chunks_referenced": report.chunks_referenced,
            "chunks_checked": report.chunks_checked,
            "problems": [asdict(p) for p in report.problems],
            "deep": bool(spec.params.get("deep", False)),
        }
    finally:
        target.close()


def verify_done(s: Session, job: Job, result: dict[str, Any]) -> None:
    bad: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for prob in result.get("problems", []):
        bad.setdefault((prob["host"], prob["point"]), []).append(prob)
    q = select(Point, Host).join(Host, Host.id == Point.host_id)
    if job.host_id:
        q = q.where(Host.id == job.host_id)
    elif job.target_id:
        q = q.where(Host.target_id == job.target_id)
    now = utcnow()
    for point, host in s.execute(q).all():
        probs = bad.get((host.name, point.point_id))
        if probs:
            point.status = "damaged"
            alerts.open_alert(
                s, "point_damaged",
                f"restore point {point.point_id} of {host.name} is damaged: {probs[0]['reason']}"
                + (f" (+{len(probs) - 1} more)" if len(probs) > 1 else ""),
                host_id=host.id, job_id=job.id, severity="critical",
            )
        elif point.created <= (job.started or now):
            point.verified = now


register_kind(JobKind("sync", run_sync, exclusive=True, on_success=sync_done,
                      on_failure=sync_failed,
                      description="copy the host's disks to a new restore point"))
register_kind(JobKind("restore", run_restore,
                      description="write a restore point's disks to files or devices"))
register_kind(JobKind("verify", run_verify, needs_host=False, exclusive=True,
                      on_success=verify_done,
                      description="check restore points are complete (deep: intact)"))
