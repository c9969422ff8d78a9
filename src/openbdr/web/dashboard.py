"""`GET /api/v1/console/dashboard`: every host's state, the counts, open alerts and the
chart series in one call, shaped for the dashboard and nothing more.

A row carries only what the dashboard's host table shows (no source, disks or job
results): with a thousand hosts the payload, its encoding and the browser's parsing
all scale with it. Problem hosts come first, so the first screenful is the useful one.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy import func, select

from ..control.apierrors import RESPONSES
from ..control.auth import DB, Viewer
from ..control.jobs import ACTIVE
from ..control.models import Alert, Host, Job, utcnow
from ..control.routes_admin import alert_out
from ..control.status import Facts, collect
from .history import series

router = APIRouter(prefix="/api/v1/console", responses=RESPONSES, include_in_schema=False)
#: the dashboard's order: what needs attention first
ORDER = {"breached": 0, "unprotected": 1, "warning": 2, "ok": 3, "disabled": 4}


def dashboard_row(f: Facts, host_id: int, name: str, enabled: bool,
                  policy_id: int | None) -> dict[str, Any]:
    protection, rpo, age = f.state(host_id, enabled, policy_id)
    n, stored, read, _ = f.points.get(host_id, (0, 0, 0, None))
    sync, drill, job = f.last_sync.get(host_id), f.last_drill.get(host_id), f.active.get(host_id)
    return {
        "name": name, "protection": protection, "rpo_seconds": rpo,
        "age_seconds": None if age is None else round(age, 1),
        "points": n, "read_bytes": read, "stored_bytes": stored,
        "open_alerts": f.alerts.get(host_id, 0),
        "last_sync": {"state": sync.state, "at": sync.finished or sync.created} if sync else None,
        "last_drill": {
            "state": drill.state, "verdict": (drill.result or {}).get("verdict"),
            "at": drill.finished or drill.created,
        } if drill else None,
        "active_job": {"id": job.id, "kind": job.kind, "state": job.state,
                       "progress": job.progress} if job else None,
    }


@router.get("/dashboard")
def dashboard(
    s: DB, _p: Viewer,
    hours: Annotated[float, Query(gt=0, le=24 * 90)] = 24.0,
    limit: Annotated[int, Query(ge=1, le=100000)] = 10000,
) -> Response:
    """Encoded with `json.dumps` directly: FastAPI's generic encoder took longer than the
    queries for a thousand hosts."""
    now = utcnow()
    hosts = s.execute(select(Host.id, Host.name, Host.enabled, Host.policy_id)
                      .order_by(Host.name).limit(limit)).all()
    every = len(hosts) < limit  # all hosts: no id list to send to the database
    facts = collect(s, None if every else [h.id for h in hosts], now)
    rows = [dashboard_row(facts, *h) for h in hosts]
    rows.sort(key=lambda r: ORDER[r["protection"]])  # stable: by name within a state
    by = Counter(r["protection"] for r in rows)
    jobs = dict(s.execute(select(Job.state, func.count()).where(Job.state.in_(ACTIVE))
                          .group_by(Job.state)).all())
    alerts = s.execute(
        select(Alert, Host.name).join(Host, Host.id == Alert.host_id, isouter=True)
        .where(Alert.resolved.is_(None)).order_by(Alert.id.desc()).limit(100)
    ).all()
    out = {
        "now": now,
        "counts": {
            "hosts": len(hosts) if every else int(s.scalar(select(func.count()).select_from(Host))
                                                  or 0),
            **{k: by.get(k, 0) for k in ORDER},
            "jobs": {k: int(v) for k, v in jobs.items()},
            "open_alerts": int(s.scalar(select(func.count()).select_from(Alert)
                                        .where(Alert.resolved.is_(None))) or 0),
            "stored_bytes": sum(r["stored_bytes"] for r in rows),
            "read_bytes": sum(r["read_bytes"] for r in rows),
        },
        "hosts": rows,
        "alerts": [alert_out(a, h) for a, h in alerts],
        "history": series(s, now, hours=hours),
    }
    return Response(json.dumps(out, default=_iso, separators=(",", ":")),
                    media_type="application/json")


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
