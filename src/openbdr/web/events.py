"""Server-sent events for the console: live job progress and "the catalog changed".

The stream polls the catalog (cheap aggregate queries, the same on SQLite and
PostgreSQL) so it sees what other server processes and remote agents changed too:

    event: jobs     data: [every active job with its progress]   (when any changed)
    event: catalog  data: {"version": "..."}                    (when anything else did)

Clients read it with `fetch` (to send the bearer token in a header, as everywhere else)
and re-read their page on `catalog`. A stream ends after `MAX_SECONDS`; clients reconnect.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from ..control.apierrors import RESPONSES
from ..control.auth import Viewer, services
from ..control.jobs import ACTIVE, FINAL
from ..control.models import Alert, AuditEntry, Host, Job, Point
from ..control.services import Services

router = APIRouter(prefix="/api/v1/console", responses=RESPONSES, include_in_schema=False)
Svc = Annotated[Services, Depends(services)]
MAX_SECONDS = 600.0
KEEPALIVE = 15.0


def snapshot(factory: sessionmaker[Session]) -> tuple[list[dict[str, Any]], str]:
    """Active jobs with progress, and a version string of everything else."""
    with factory() as s:
        rows = s.execute(
            select(Job, Host.name).join(Host, Host.id == Job.host_id, isouter=True)
            .where(Job.state.in_(ACTIVE)).order_by(Job.id)
        ).all()
        jobs = [{"id": j.id, "kind": j.kind, "state": j.state, "host": name,
                 "progress": j.progress} for j, name in rows]
        marks = [
            s.scalar(select(func.max(Job.id))),
            s.scalar(select(func.count()).select_from(Job).where(Job.state.in_(FINAL))),
            s.scalar(select(func.max(Point.id))),
            s.scalar(select(func.count()).select_from(Point)),
            s.scalar(select(func.max(Point.verified))),
            s.scalar(select(func.max(Alert.id))),
            s.scalar(select(func.count()).select_from(Alert).where(Alert.resolved.is_(None))),
            s.scalar(select(func.max(AuditEntry.id))),
            s.scalar(select(func.count()).select_from(Host)),
        ]
    version = ":".join(str(m or 0) for m in marks) + "|" + ",".join(
        f"{j['id']}.{j['state']}" for j in jobs)
    return jobs, version


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


async def stream(request: Request, factory: sessionmaker[Session],
                 interval: float) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    last_jobs: str | None = None
    last_version: str | None = None
    sent = started = time.monotonic()
    while time.monotonic() - started < MAX_SECONDS:
        if await request.is_disconnected():
            return
        jobs, version = await run_in_threadpool(snapshot, factory)
        encoded = json.dumps(jobs, default=str, sort_keys=True)
        if encoded != last_jobs:
            last_jobs = encoded
            sent = time.monotonic()
            yield _event("jobs", jobs)
        if version != last_version:
            last_version = version
            sent = time.monotonic()
            yield _event("catalog", {"version": version})
        if time.monotonic() - sent > KEEPALIVE:
            sent = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(interval)


@router.get("/events")
def events(
    request: Request, _p: Viewer, svc: Svc,
    interval: Annotated[float, Query(ge=0.2, le=30)] = 1.0,
) -> StreamingResponse:
    """A viewer's live feed (text/event-stream)."""
    return StreamingResponse(
        stream(request, svc.factory, interval), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
