"""Each host's protection state at a glance, for any number of hosts in a few queries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .jobs import ACTIVE
from .models import Alert, Host, Job, Point, Policy, Target, utcnow


def job_brief(j: Job | None) -> dict[str, Any] | None:
    if j is None:
        return None
    return {"id": j.id, "kind": j.kind, "state": j.state, "created": j.created,
            "finished": j.finished, "error": j.error, "progress": j.progress,
            "result": {k: v for k, v in j.result.items() if k != "point"}}


def _last_jobs(s: Session, ids: list[int], kinds: tuple[str, ...]) -> dict[tuple[int, str], Job]:
    newest = (
        select(func.max(Job.id))
        .where(Job.host_id.in_(ids), Job.kind.in_(kinds),
               Job.state.in_(("succeeded", "failed", "cancelled")))
        .group_by(Job.host_id, Job.kind)
    )
    return {(j.host_id or 0, j.kind): j for j in s.scalars(select(Job).where(Job.id.in_(newest)))}


def host_rows(s: Session, hosts: list[Host], now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or utcnow()
    ids = [h.id for h in hosts]
    if not ids:
        return []
    policies = {p.id: p for p in s.scalars(select(Policy))}
    targets = {t.id: t.name for t in s.scalars(select(Target))}
    stats = {
        h: (n, stored or 0, read or 0)
        for h, n, stored, read in s.execute(
            select(Point.host_id, func.count(), func.sum(Point.stored_bytes),
                   func.sum(Point.read_bytes))
            .where(Point.host_id.in_(ids)).group_by(Point.host_id)
        ).all()
    }
    newest = (
        select(Point.host_id.label("h"), func.max(Point.created).label("c"))
        .where(Point.host_id.in_(ids)).group_by(Point.host_id).subquery()
    )
    latest = {
        p.host_id: p
        for p in s.scalars(
            select(Point).join(newest, (Point.host_id == newest.c.h)
                               & (Point.created == newest.c.c))
        )
    }
    last = _last_jobs(s, ids, ("sync", "drill"))
    active = {
        j.host_id: j
        for j in s.scalars(
            select(Job).where(Job.host_id.in_(ids), Job.state.in_(ACTIVE)).order_by(Job.id.desc())
        )
    }
    alerts = dict(
        s.execute(
            select(Alert.host_id, func.count())
            .where(Alert.host_id.in_(ids), Alert.resolved.is_(None)).group_by(Alert.host_id)
        ).all()
    )
    out = []
    for h in hosts:
        policy = policies.get(h.policy_id) if h.policy_id else None
        p = latest.get(h.id)
        age = (now - p.created).total_seconds() if p else None
        rpo = policy.rpo_seconds if policy else None
        if not h.enabled or (policy is not None and not policy.enabled):
            protection = "disabled"
        elif p is None or rpo is None:
            protection = "unprotected"
        elif age is not None and age > rpo:
            protection = "breached"
        elif age is not None and age > rpo * 0.8:
            protection = "warning"
        else:
            protection = "ok"
        n, stored, read = stats.get(h.id, (0, 0, 0))
        out.append({
            "id": h.id, "name": h.name, "source": h.source, "target": targets.get(h.target_id, ""),
            "policy": policy.name if policy else None, "pool": h.pool, "enabled": h.enabled,
            "disks": h.disks, "created": h.created,
            "status": {
                "protection": protection,
                "rpo_seconds": rpo,
                "last_point": {
                    "id": p.point_id, "created": p.created, "age_seconds": round(age or 0, 1),
                    "consistency": p.consistency, "status": p.status, "verified": p.verified,
                } if p else None,
                "points": n, "stored_bytes": int(stored), "read_bytes": int(read),
                "last_sync": job_brief(last.get((h.id, "sync"))),
                "last_drill": job_brief(last.get((h.id, "drill"))),
                "active_job": job_brief(active.get(h.id)),
                "open_alerts": int(alerts.get(h.id, 0)),
            },
        })
    return out
