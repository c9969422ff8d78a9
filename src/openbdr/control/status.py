"""Each host's protection state at a glance, for any number of hosts in a few queries.

Every query selects only the columns it needs and aggregates in the database: loading
ORM objects (with their JSON columns) for a thousand hosts took longer than the queries.
`collect` gathers the facts once; `host_rows` shapes them for the REST API and the
console shapes its own, smaller rows from the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, func, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from .jobs import ACTIVE, FINAL
from .models import Alert, Host, Job, Point, Policy, Target, utcnow

#: a job as the status shows it (columns, not ORM objects)
JOB_COLUMNS = (Job.id, Job.host_id, Job.kind, Job.state, Job.created, Job.finished, Job.error,
               Job.progress)


@dataclass
class Facts:
    """What the catalog knows about a set of hosts, keyed by host id."""

    now: datetime
    #: policy id → (name, rpo_seconds, enabled)
    policies: dict[int, tuple[str, int, bool]] = field(default_factory=dict)
    #: host id → (points, stored bytes, read bytes, newest point's creation)
    points: dict[int, tuple[int, int, int, datetime]] = field(default_factory=dict)
    last_sync: dict[int, Row[Any]] = field(default_factory=dict)
    last_drill: dict[int, Row[Any]] = field(default_factory=dict)
    active: dict[int, Row[Any]] = field(default_factory=dict)
    alerts: dict[int, int] = field(default_factory=dict)

    def state(self, host_id: int, enabled: bool, policy_id: int | None
              ) -> tuple[str, int | None, float | None]:
        """(protection, RPO target, age of the newest point in seconds)."""
        policy = self.policies.get(policy_id) if policy_id else None
        stats = self.points.get(host_id)
        age = (self.now - stats[3]).total_seconds() if stats else None
        rpo = policy[1] if policy else None
        if not enabled or (policy is not None and not policy[2]):
            return "disabled", rpo, age
        if age is None or rpo is None:
            return "unprotected", rpo, age
        if age > rpo:
            return "breached", rpo, age
        return ("warning" if age > rpo * 0.8 else "ok"), rpo, age


def _among(column: InstrumentedAttribute[Any], ids: list[int] | None) -> ColumnElement[bool]:
    """`column IN ids`, or no condition at all when every host is wanted."""
    return true() if ids is None else column.in_(ids)


def _last_jobs(s: Session, ids: list[int] | None, kind: str,
               extra: tuple[Any, ...] = ()) -> dict[int, Row[Any]]:
    newest = (
        select(func.max(Job.id))
        .where(_among(Job.host_id, ids), Job.kind == kind, Job.state.in_(FINAL))
        .group_by(Job.host_id)
    )
    rows = s.execute(select(*JOB_COLUMNS, *extra).where(Job.id.in_(newest))).all()
    return {r.host_id: r for r in rows}


def collect(s: Session, ids: list[int] | None, now: datetime | None = None,
            sync_results: bool = False) -> Facts:
    """Facts about the hosts `ids` (None: every host). Drill results are always read
    (their verdict); sync results only on request (they carry the point's manifest)."""
    f = Facts(now=now or utcnow())
    f.policies = {pid: (name, rpo, en) for pid, name, rpo, en in s.execute(
        select(Policy.id, Policy.name, Policy.rpo_seconds, Policy.enabled))}
    f.points = {
        h: (n, int(stored or 0), int(read or 0), newest)
        for h, n, stored, read, newest in s.execute(
            select(Point.host_id, func.count(), func.sum(Point.stored_bytes),
                   func.sum(Point.read_bytes), func.max(Point.created))
            .where(_among(Point.host_id, ids)).group_by(Point.host_id)
        )
    }
    f.last_sync = _last_jobs(s, ids, "sync", (Job.result,) if sync_results else ())
    f.last_drill = _last_jobs(s, ids, "drill", (Job.result,))
    # the oldest active job of a host is the one running (newer ones wait behind it)
    active = s.execute(select(*JOB_COLUMNS).where(_among(Job.host_id, ids),
                                                  Job.state.in_(ACTIVE))
                       .order_by(Job.id.desc())).all()
    f.active = {r.host_id: r for r in active}
    f.alerts = {h: int(n) for h, n in s.execute(
        select(Alert.host_id, func.count())
        .where(_among(Alert.host_id, ids), Alert.resolved.is_(None)).group_by(Alert.host_id))}
    return f


def job_brief(j: Row[Any] | None) -> dict[str, Any] | None:
    if j is None:
        return None
    result = getattr(j, "result", None) or {}
    return {"id": j.id, "kind": j.kind, "state": j.state, "created": j.created,
            "finished": j.finished, "error": j.error, "progress": j.progress,
            "result": {k: v for k, v in result.items() if k != "point"}}


def host_rows(s: Session, hosts: list[Host], now: datetime | None = None) -> list[dict[str, Any]]:
    """The REST API's host rows (`HostOut`): the host, its state and its newest point."""
    ids = [h.id for h in hosts]
    if not ids:
        return []
    f = collect(s, ids, now, sync_results=True)
    targets = dict(s.execute(select(Target.id, Target.name)
                             .where(Target.id.in_({h.target_id for h in hosts}))).all())
    newest = (
        select(Point.host_id.label("h"), func.max(Point.created).label("c"))
        .where(Point.host_id.in_(ids)).group_by(Point.host_id).subquery()
    )
    latest = {r.host_id: r for r in s.execute(
        select(Point.host_id, Point.point_id, Point.created, Point.consistency, Point.status,
               Point.verified)
        .join(newest, (Point.host_id == newest.c.h) & (Point.created == newest.c.c)))}
    out = []
    for h in hosts:
        protection, rpo, _age = f.state(h.id, h.enabled, h.policy_id)
        n, stored, read, _ = f.points.get(h.id, (0, 0, 0, None))
        p = latest.get(h.id)
        policy = f.policies.get(h.policy_id) if h.policy_id else None
        out.append({
            "id": h.id, "name": h.name, "source": h.source, "target": targets.get(h.target_id, ""),
            "policy": policy[0] if policy else None, "pool": h.pool, "enabled": h.enabled,
            "disks": h.disks, "created": h.created,
            "status": {
                "protection": protection,
                "rpo_seconds": rpo,
                "last_point": {
                    "id": p.point_id, "created": p.created,
                    "age_seconds": round((f.now - p.created).total_seconds(), 1),
                    "consistency": p.consistency, "status": p.status, "verified": p.verified,
                } if p else None,
                "points": n, "stored_bytes": stored, "read_bytes": read,
                "last_sync": job_brief(f.last_sync.get(h.id)),
                "last_drill": job_brief(f.last_drill.get(h.id)),
                "active_job": job_brief(f.active.get(h.id)),
                "open_alerts": f.alerts.get(h.id, 0),
            },
        })
    return out
