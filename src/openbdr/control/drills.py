"""The `drill` job kind for the control plane: scheduled and on-demand drills.

Imported by `control.registry.load_plugins`. The plan comes from the job's
`params.plan` (a table like the TOML, or TOML text), else the host's policy
`drill_plan`, else `plan.DEFAULT_PLAN`. The worker runs the drill against the host's
repository (which keeps the report and marks the point); the server then mirrors the
verdict into the catalog and opens a critical alert when a point fails its drill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..drill.plan import DEFAULT_PLAN, Plan, parse_plan, plan_from_mapping
from ..drill.report import prefix
from ..drill.runner import Drill, DrillOptions
from ..errors import OpenBDRError
from . import alerts
from .models import Host, Point, utcnow
from .registry import JobKind, register_kind
from .worker import JobContext, JobStopped

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .models import Job


def job_plan(params: dict[str, Any], policy: dict[str, Any]) -> Plan:
    raw = params.get("plan") or policy.get("drill_plan") or None
    if raw is None:
        return parse_plan(DEFAULT_PLAN, "default plan")
    if isinstance(raw, str):
        return parse_plan(raw, "job plan")
    return plan_from_mapping(raw, f"policy {policy.get('name', '')} drill plan".strip())


def run_drill_job(ctx: JobContext) -> dict[str, Any]:
    spec = ctx.spec
    if not spec.host:
        raise OpenBDRError(f"drill job {spec.id} names no host")
    plan = job_plan(spec.params, spec.policy or {})
    target = ctx.open_target()
    stopped: list[str] = []

    def say(msg: str) -> None:
        ctx.log(msg)
        if ctx.should_stop() and not stopped:
            stopped.append(ctx.stop_reason or "stopped")
            raise JobStopped(f"drill job {spec.id} stopped ({stopped[0]})")

    try:
        point = target.point(spec.host["name"], str(spec.params.get("point") or "latest"))
        ctx.progress(point=point.id, phase="running")
        rep = Drill(target, point, plan, DrillOptions(say=say)).run()
    finally:
        target.close()
    if stopped:
        raise JobStopped(f"drill job {spec.id} stopped ({stopped[0]}); torn down")
    return {
        "drill": rep.id,
        "host": rep.host,
        "point": rep.point,
        "verdict": rep.verdict,
        "reason": rep.reason,
        "rto_first_s": rep.rto_first_s,
        "rto_all_s": rep.rto_all_s,
        "finished": rep.finished,
        "report": prefix(rep.host, rep.id) + "report.json",
    }


def drill_done(s: Session, job: Job, result: dict[str, Any]) -> None:
    """Mirror the verdict into the catalog (the manifest was updated by the worker)."""
    host = s.get(Host, job.host_id) if job.host_id else None
    if host is None:
        return
    row = s.query(Point).filter(Point.host_id == host.id, Point.point_id == result["point"]).first()
    summary = {k: result.get(k) for k in ("drill", "verdict", "reason", "finished", "rto_first_s")}
    if row is not None:
        row.drill = summary
        if result["verdict"] == "passed" and row.status in ("ok", "verified"):
            row.status, row.verified = "verified", utcnow()
        elif result["verdict"] != "passed" and row.status == "verified":
            row.status = "ok"
    if result["verdict"] != "passed":
        alerts.open_alert(
            s,
            "drill_failed",
            f"restore point {result['point']} of {host.name} failed its drill "
            f"{result['drill']}: {result['reason']}",
            host_id=host.id,
            job_id=job.id,
            severity="critical",
        )


register_kind(
    JobKind(
        "drill",
        run_drill_job,
        on_success=drill_done,
        description="boot or start a restore point in isolation, probe it, report, tear down",
    )
)
