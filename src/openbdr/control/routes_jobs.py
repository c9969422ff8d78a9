"""Jobs (list, start, pause, resume, cancel), agents and the agents' pull API."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from .apierrors import RESPONSES, ApiError, not_found
from .auth import DB, Admin, AgentP, Operator, Viewer, audit, services
from .crypto import digest, new_token
from .jobs import ACTIVE
from .models import Agent, EnrolmentToken, Host, Job, JobLog, Target, utcnow
from .routes_catalog import host_by_name, target_by_name
from .schemas import (
    AgentOut,
    EnrolIn,
    EnrolmentIn,
    EnrolmentOut,
    EnrolOut,
    FinishIn,
    HeartbeatIn,
    Id,
    JobIn,
    JobLogOut,
    JobOut,
    LeaseIn,
    LeaseOut,
    StateOut,
)
from .services import Services

router = APIRouter(prefix="/api/v1", responses=RESPONSES)
Svc = Annotated[Services, Depends(services)]


def job_out(s: Session, j: Job) -> dict[str, Any]:
    host = s.get(Host, j.host_id) if j.host_id else None
    target = s.get(Target, j.target_id) if j.target_id else None
    return job_dict(j, host.name if host else None, target.name if target else None)


def job_dict(j: Job, host: str | None, target: str | None) -> dict[str, Any]:
    return {
        "id": j.id, "kind": j.kind, "state": j.state, "host": host,
        "target": target, "pool": j.pool, "params": j.params,
        "progress": j.progress, "result": j.result, "error": j.error, "attempts": j.attempts,
        "lease_owner": j.lease_owner, "lease_expires": j.lease_expires,
        "created_by": j.created_by, "created": j.created, "started": j.started,
        "finished": j.finished,
    }


def job_by_id(s: Session, job_id: Id) -> Job:
    j = s.get(Job, job_id)
    if j is None:
        raise not_found(f"job {job_id}", "list them with GET /api/v1/jobs")
    return j


@router.get("/jobs", response_model=list[JobOut], tags=["jobs"])
def list_jobs(
    s: DB, _p: Viewer,
    state: Annotated[str | None, Query(max_length=16, description="a state, or `active`")] = None,
    host: Annotated[str | None, Query(max_length=128)] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Newest first, with live progress (bytes, rate, ETA) of running jobs."""
    q = (select(Job, Host.name, Target.name)
         .join(Host, Host.id == Job.host_id, isouter=True)
         .join(Target, Target.id == Job.target_id, isouter=True))
    if state == "active":
        q = q.where(Job.state.in_(ACTIVE))
    elif state:
        q = q.where(Job.state == state)
    if host:
        q = q.where(Job.host_id == host_by_name(s, host).id)
    if kind:
        q = q.where(Job.kind == kind)
    return [job_dict(j, h, t) for j, h, t in s.execute(q.order_by(Job.id.desc()).limit(limit))]


@router.post("/jobs", response_model=JobOut, status_code=201, tags=["jobs"])
def start_job(body: JobIn, s: DB, p: Operator, svc: Svc) -> dict[str, Any]:
    """Start a job of any installed kind: sync, restore, verify, drill, retention (a host),
    gc (a target, or a host's target); `GET /kinds` lists them."""
    if body.kind.startswith("platform-"):
        raise ApiError(400, "bad_request", f"a {body.kind} job is started through its platform",
                       f"POST /api/v1/platforms/{{name}}/{body.kind.removeprefix('platform-')}")
    host = host_by_name(s, body.host) if body.host else None
    target = target_by_name(s, body.target) if body.target else None
    if host is None and target is None:
        raise ApiError(409, "conflict", f"a {body.kind} job needs a host or a target",
                       "give one of them")
    job = svc.queue.enqueue(s, body.kind, host=host, target=target, params=body.params,
                            created_by=p.name, priority=20)
    audit(s, p, "start", "job", job.id, kind=body.kind, host=body.host, params=body.params)
    return job_out(s, job)


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(job_id: Id, s: DB, _p: Viewer) -> dict[str, Any]:
    return job_out(s, job_by_id(s, job_id))


@router.get("/jobs/{job_id}/logs", response_model=list[JobLogOut], tags=["jobs"])
def job_logs(
    job_id: Id, s: DB, _p: Viewer, limit: Annotated[int, Query(ge=1, le=10000)] = 1000
) -> list[dict[str, Any]]:
    job_by_id(s, job_id)
    rows = s.scalars(select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id)
                     .limit(limit))
    return [{"ts": r.ts, "level": r.level, "message": r.message} for r in rows]


def _action(name: str) -> Any:
    def act(job_id: Id, s: DB, p: Operator, svc: Svc) -> dict[str, Any]:
        job = job_by_id(s, job_id)
        getattr(svc.queue, name)(s, job)
        s.add(JobLog(job_id=job.id, message=f"{name} requested by {p.name}: now {job.state}"))
        audit(s, p, name, "job", job.id, state=job.state)
        return job_out(s, job)

    act.__name__ = f"{name}_job"
    act.__doc__ = {
        "pause": "A running sync stops at the next block after a checkpoint.",
        "resume": "Queue again; it continues from its checkpoint with the current policy.",
        "cancel": "Stop and give up (the checkpoint stays: the next sync reuses it).",
    }[name]
    return act


for _name in ("pause", "resume", "cancel"):
    router.add_api_route(f"/jobs/{{job_id}}/{_name}", _action(_name), methods=["POST"],
                         response_model=JobOut, tags=["jobs"])


# -- agents (admin side) ----------------------------------------------------------
def agent_out(a: Agent) -> dict[str, Any]:
    return {"id": a.id, "name": a.name, "pool": a.pool, "enrolled": a.enrolled,
            "last_seen": a.last_seen, "version": a.version, "disabled": a.disabled}


@router.get("/agents", response_model=list[AgentOut], tags=["agents"])
def list_agents(s: DB, _p: Admin) -> list[dict[str, Any]]:
    return [agent_out(a) for a in s.scalars(select(Agent).order_by(Agent.name))]


@router.post("/agents/enrolment-tokens", response_model=EnrolmentOut, status_code=201,
             tags=["agents"])
def enrolment_token(body: EnrolmentIn, s: DB, p: Admin) -> dict[str, Any]:
    """A one-time token with which one agent joins `pool` (a host name, or a proxy group)."""
    token = new_token("obde")
    expires = utcnow() + timedelta(hours=body.expires_in_hours)
    s.add(EnrolmentToken(token_hash=digest(token), pool=body.pool, created_by=p.name,
                         expires=expires))
    audit(s, p, "create", "enrolment-token", body.pool, expires=expires.isoformat())
    return {"token": token, "pool": body.pool, "expires": expires}


@router.delete("/agents/{agent_id}", status_code=204, tags=["agents"])
def disable_agent(agent_id: Id, s: DB, p: Admin) -> Response:
    """Revoke an agent's credential; its jobs are re-leased when their leases expire."""
    a = s.get(Agent, agent_id)
    if a is None:
        raise not_found(f"agent {agent_id}")
    a.disabled = True
    audit(s, p, "disable", "agent", a.name)
    return Response(status_code=204)


@router.post("/agents/enrol", response_model=EnrolOut, status_code=201, tags=["agent API"],
             openapi_extra={"security": []})
def enrol(body: EnrolIn, s: DB) -> dict[str, Any]:
    """Exchange a one-time enrolment token for the agent's own credential."""
    row = s.scalar(select(EnrolmentToken).where(EnrolmentToken.token_hash == digest(body.token)))
    now = utcnow()
    if row is None or row.used is not None or row.expires < now:
        raise ApiError(401, "unauthorized", "unknown, used or expired enrolment token",
                       "ask an admin for a new one")
    if s.scalar(select(Agent.id).where(Agent.name == body.name)) is not None:
        raise ApiError(409, "conflict", f"an agent named {body.name!r} exists",
                       "choose another --name")
    credential = new_token("obda")
    agent = Agent(name=body.name, pool=row.pool, credential_hash=digest(credential),
                  version=body.version, last_seen=now, disabled=False)
    s.add(agent)
    s.flush()
    row.used = now
    row.agent_id = agent.id
    audit(s, f"agent:{body.name}", "enrol", "agent", body.name, pool=row.pool)
    return {"agent_id": agent.id, "name": agent.name, "pool": agent.pool,
            "credential": credential}


# -- the agents' pull API ---------------------------------------------------------
def _worker(p: Any, worker: str) -> str:
    return f"agent:{p.name}:{worker}"


def _own_job(s: Session, p: Any, job_id: Id) -> None:
    job = s.get(Job, job_id)
    if job is None:
        raise not_found(f"job {job_id}")
    if job.pool != p.pool:
        raise ApiError(403, "forbidden", f"job {job_id} is not a job of pool {p.pool!r}")


@router.post("/agent/lease", response_model=LeaseOut, tags=["agent API"])
def agent_lease(body: LeaseIn, s: DB, p: AgentP, svc: Svc) -> dict[str, Any]:
    """The next queued job of one of this agent's hosts, or null."""
    s.commit()  # the queue works in its own transactions
    spec = svc.queue.lease(_worker(p, body.worker), p.pool)
    return {"job": spec.to_json() if spec else None}


@router.post("/agent/jobs/{job_id}/heartbeat", response_model=StateOut, tags=["agent API"])
def agent_heartbeat(job_id: Id, body: HeartbeatIn, s: DB, p: AgentP, svc: Svc) -> dict[str, str]:
    """Renew the lease, report progress and logs; the answer says pause/cancel if asked."""
    _own_job(s, p, job_id)
    s.commit()
    state = svc.queue.heartbeat(job_id, _worker(p, body.worker), body.progress,
                                [tuple(x) for x in body.logs])  # type: ignore[misc]
    return {"state": state}


@router.post("/agent/jobs/{job_id}/finish", response_model=StateOut, tags=["agent API"])
def agent_finish(job_id: Id, body: FinishIn, s: DB, p: AgentP, svc: Svc) -> dict[str, str]:
    _own_job(s, p, job_id)
    s.commit()
    state = svc.queue.finish(job_id, _worker(p, body.worker), body.outcome, body.result,
                             body.error)
    return {"state": state}
