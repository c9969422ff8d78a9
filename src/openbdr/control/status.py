"""Each host's protection state at a glance, for any number of hosts in a few queries.

Every query selects only the columns it needs and aggregates in the database: loading
ORM objects (with their JSON columns) for a thousand hosts took longer than the queries.
`collect` gathers the facts once; `host_rows` shapes them for the REST API and the
console shapes its own, smaller rows from the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, bindparam, func, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from .jobs import ACTIVE, FINAL
from .models import Alert, Host, Job, Platform, Point, Policy, Target, utcnow

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
    #: host id → id (row) of its newest restore point
    newest_point: dict[int, int] = field(default_factory=dict)

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


#: the host ids a statement is for (an expanding bind parameter: one cached statement)
IDS = "ids"


def _among(column: InstrumentedAttribute[Any], every: bool) -> ColumnElement[bool]:
    """`column IN :ids`, or no condition at all when every host is wanted."""
    return true() if every else column.in_(bindparam(IDS, expanding=True))


def _newest(column: InstrumentedAttribute[Any], *where: ColumnElement[bool],
            order: tuple[Any, ...]) -> Any:
    """A host's first row by `order` (a correlated subquery: one index probe per host)."""
    return select(column).where(*where).order_by(*order).limit(1).scalar_subquery()


# The statements are built once: building SQLAlchemy expressions cost more than running
# them (a host's status took 3/4 of its time in operator overloading).
@cache
def _ids_statement(every: bool) -> Select[Any]:
    """Per host: the ids of its newest finished sync and drill, of its running job and of its
    newest point, and its open alerts: one query, whatever the job and point history."""
    j = aliased(Job)

    def last(kind: str) -> Any:
        return _newest(j.id, j.host_id == Host.id, j.kind == kind, j.state.in_(FINAL),
                       order=(j.id.desc(),))

    a = aliased(Alert)
    return select(
        Host.id,
        last("sync").label("sync"),
        last("drill").label("drill"),
        # the oldest active job of a host is the one running (newer ones wait behind it)
        _newest(j.id, j.host_id == Host.id, j.state.in_(ACTIVE), order=(j.id,)).label("active"),
        _newest(Point.id, Point.host_id == Host.id,
                order=(Point.created.desc(), Point.id.desc())).label("point"),
        select(func.count()).where(a.host_id == Host.id, a.resolved.is_(None))
        .scalar_subquery().label("alerts"),
    ).where(_among(Host.id, every))


@cache
def _points_statement(every: bool) -> Select[Any]:
    stmt: Select[Any] = (
        select(Point.host_id, func.count(), func.sum(Point.stored_bytes),  # type: ignore[assignment]
               func.sum(Point.read_bytes), func.max(Point.created))
        .where(_among(Point.host_id, every)).group_by(Point.host_id)
    )
    return stmt


@cache
def _jobs_statement(result: bool) -> Select[Any]:
    return select(*JOB_COLUMNS, *((Job.result,) if result else ())).where(_among(Job.id, False))


POLICIES = select(Policy.id, Policy.name, Policy.rpo_seconds, Policy.enabled)
LATEST_POINTS = select(
    Point.host_id, Point.point_id, Point.created, Point.consistency, Point.status, Point.verified
).where(_among(Point.id, False))
TARGETS = select(Target.id, Target.name).where(_among(Target.id, False))
PLATFORMS = select(Platform.id, Platform.name).where(_among(Platform.id, False))


def collect(s: Session, ids: list[int] | None, now: datetime | None = None,
            sync_results: bool = False) -> Facts:
    """Facts about the hosts `ids` (None: every host). Drill results are always read
    (their verdict); sync results only on request (they carry the point's manifest)."""
    f = Facts(now=now or utcnow())
    every = ids is None
    bind = {} if every else {IDS: ids}
    f.policies = {pid: (name, rpo, en) for pid, name, rpo, en in s.execute(POLICIES)}
    f.points = {
        h: (n, int(stored or 0), int(read or 0), newest)
        for h, n, stored, read, newest in s.execute(_points_statement(every), bind)
    }
    rows = list(s.execute(_ids_statement(every), bind))
    f.alerts = {r.id: int(r.alerts) for r in rows if r.alerts}
    f.newest_point = {r.id: r.point for r in rows if r.point is not None}
    syncs = [r.sync for r in rows if r.sync is not None]
    drills = [r.drill for r in rows if r.drill is not None]
    active = [r.active for r in rows if r.active is not None]
    with_result, bare = (syncs + drills, active) if sync_results else (drills, syncs + active)
    jobs: dict[int, Row[Any]] = {}
    for want, result in ((with_result, True), (bare, False)):
        if want:
            jobs.update((r.id, r) for r in s.execute(_jobs_statement(result), {IDS: want}))
    for r in rows:
        for mine, jid in ((f.last_sync, r.sync), (f.last_drill, r.drill), (f.active, r.active)):
            if jid in jobs:
                mine[r.id] = jobs[jid]
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
    targets = dict(s.execute(TARGETS, {IDS: list({h.target_id for h in hosts})}).all())
    points = list(f.newest_point.values())
    latest = {r.host_id: r for r in s.execute(LATEST_POINTS, {IDS: points})} if points else {}
    pids = list({h.platform_id for h in hosts if h.platform_id is not None})
    platforms = dict(s.execute(PLATFORMS, {IDS: pids}).all()) if pids else {}
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
            "platform": platforms.get(h.platform_id) if h.platform_id else None, "vm": h.vm,
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
