"""Log-in, users and tokens, alerts, audit log, overview, installed kinds, health."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import Select, bindparam, case, false, func, or_, select

from .apierrors import RESPONSES, ApiError, not_found
from .auth import DB, Admin, Operator, Principal, Viewer, audit, principal, services
from .crypto import check_password, digest, hash_password, new_token
from .jobs import ACTIVE
from .models import Agent, Alert, ApiToken, AuditEntry, Host, Job, Point, Policy, User, utcnow
from .platforms import platform_types
from .registry import KINDS, SOURCES, load_plugins
from .schemas import (
    AlertOut,
    AuditOut,
    Id,
    KindsOut,
    LoginIn,
    MeOut,
    OverviewOut,
    TokenIn,
    TokenOut,
    UserIn,
    UserOut,
)
from .services import Services

router = APIRouter(prefix="/api/v1", responses=RESPONSES)
Svc = Annotated[Services, Depends(services)]


def token_out(t: ApiToken, u: User, secret: str | None = None) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "user": u.name, "role": u.role, "token": secret,
            "created": t.created, "expires": t.expires, "last_used": t.last_used}


@router.get("/health", tags=["meta"], openapi_extra={"security": []})
def health(s: DB) -> dict[str, str]:
    s.execute(select(1))
    return {"status": "ok"}


@router.post("/auth/login", response_model=TokenOut, status_code=201, tags=["auth"],
             openapi_extra={"security": []})
def login(body: LoginIn, s: DB) -> dict[str, Any]:
    """A session token (12 h) for a user with a password (the console's log-in)."""
    user = s.scalar(select(User).where(User.name == body.name))
    if user is None or not check_password(body.password, user.password_hash):
        raise ApiError(401, "unauthorized", "wrong user name or password")
    secret = new_token("obdt")
    t = ApiToken(user_id=user.id, name="session", token_hash=digest(secret),
                 expires=utcnow() + timedelta(hours=12))
    s.add(t)
    s.flush()
    audit(s, user.name, "login", "user", user.name)
    return token_out(t, user, secret)


@router.get("/me", response_model=MeOut, tags=["auth"])
def me(p: Annotated[Principal, Depends(principal)]) -> dict[str, str]:
    return {"name": p.name, "role": p.role, "kind": "agent" if p.role == "agent" else "user"}


@router.get("/users", response_model=list[UserOut], tags=["users"])
def list_users(s: DB, _p: Admin) -> list[dict[str, Any]]:
    return [{"id": u.id, "name": u.name, "role": u.role, "created": u.created}
            for u in s.scalars(select(User).order_by(User.name))]


@router.post("/users", response_model=UserOut, status_code=201, tags=["users"])
def add_user(body: UserIn, s: DB, p: Admin) -> dict[str, Any]:
    if s.scalar(select(User.id).where(User.name == body.name)) is not None:
        raise ApiError(409, "conflict", f"user {body.name!r} already exists")
    u = User(name=body.name, role=body.role,
             password_hash=hash_password(body.password) if body.password else None)
    s.add(u)
    s.flush()
    audit(s, p, "create", "user", body.name, role=body.role)
    return {"id": u.id, "name": u.name, "role": u.role, "created": u.created}


@router.delete("/users/{user_id}", status_code=204, tags=["users"])
def delete_user(user_id: Id, s: DB, p: Admin) -> Response:
    u = s.get(User, user_id)
    if u is None:
        raise not_found(f"user {user_id}")
    if u.id == p.user_id:
        raise ApiError(409, "conflict", "you cannot delete yourself", "ask another admin")
    for t in s.scalars(select(ApiToken).where(ApiToken.user_id == u.id)):
        s.delete(t)
    s.delete(u)
    audit(s, p, "delete", "user", u.name)
    return Response(status_code=204)


@router.get("/tokens", response_model=list[TokenOut], tags=["users"])
def list_tokens(s: DB, _p: Admin) -> list[dict[str, Any]]:
    rows = s.execute(select(ApiToken, User).join(User, User.id == ApiToken.user_id)
                     .order_by(ApiToken.id)).all()
    return [token_out(t, u) for t, u in rows]


@router.post("/tokens", response_model=TokenOut, status_code=201, tags=["users"])
def add_token(body: TokenIn, s: DB, p: Admin) -> dict[str, Any]:
    """An API token for a user (scripts, the CLI); the secret is shown only here."""
    u = s.scalar(select(User).where(User.name == body.user))
    if u is None:
        raise not_found(f"user {body.user!r}")
    secret = new_token("obdt")
    t = ApiToken(user_id=u.id, name=body.name, token_hash=digest(secret),
                 expires=utcnow() + timedelta(days=body.expires_in_days)
                 if body.expires_in_days else None)
    s.add(t)
    s.flush()
    audit(s, p, "create", "token", t.id, user=u.name, name=body.name)
    return token_out(t, u, secret)


@router.delete("/tokens/{token_id}", status_code=204, tags=["users"])
def delete_token(token_id: Id, s: DB, p: Admin) -> Response:
    t = s.get(ApiToken, token_id)
    if t is None:
        raise not_found(f"token {token_id}")
    s.delete(t)
    audit(s, p, "delete", "token", token_id)
    return Response(status_code=204)


# -- alerts and audit -------------------------------------------------------------
def alert_out(a: Alert, host: str | None) -> dict[str, Any]:
    return {"id": a.id, "kind": a.kind, "severity": a.severity, "host": host,
            "job_id": a.job_id, "message": a.message, "opened": a.opened,
            "resolved": a.resolved, "acknowledged_by": a.acknowledged_by}


@router.get("/alerts", response_model=list[AlertOut], tags=["alerts"])
def list_alerts(
    s: DB, _p: Viewer,
    open_only: Annotated[bool, Query(alias="open")] = True,
    limit: Annotated[int, Query(ge=1, le=10000)] = 500,
) -> list[dict[str, Any]]:
    q = select(Alert, Host.name).join(Host, Host.id == Alert.host_id, isouter=True)
    if open_only:
        q = q.where(Alert.resolved.is_(None))
    return [alert_out(a, h) for a, h in s.execute(q.order_by(Alert.id.desc()).limit(limit))]


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut, tags=["alerts"])
def ack_alert(alert_id: Id, s: DB, p: Operator) -> dict[str, Any]:
    a = s.get(Alert, alert_id)
    if a is None:
        raise not_found(f"alert {alert_id}")
    a.acknowledged_by = p.name
    audit(s, p, "acknowledge", "alert", alert_id)
    host = s.get(Host, a.host_id) if a.host_id else None
    return alert_out(a, host.name if host else None)


@router.get("/audit", response_model=list[AuditOut], tags=["audit"])
def audit_log(
    s: DB, _p: Admin, limit: Annotated[int, Query(ge=1, le=10000)] = 500
) -> list[dict[str, Any]]:
    rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
    return [{c: getattr(r, c) for c in AuditOut.model_fields} for r in rows]


# -- overview ---------------------------------------------------------------------
@router.get("/overview", response_model=OverviewOut, tags=["meta"])
def overview(s: DB, _p: Viewer) -> dict[str, Any]:
    """Counts for a dashboard header; `GET /hosts` has each host's state.

    The database classifies the hosts and counts them (a few rows back, not one per host):
    a host is breached when its newest point is older than now minus its RPO target,
    one comparison per distinct target."""
    rpos = tuple(sorted(set(s.scalars(RPOS))))
    now = utcnow()
    cuts = {f"cut{i}": now - timedelta(seconds=r) for i, r in enumerate(rpos)}
    by = {st: int(n) for st, n in s.execute(_classify(rpos), cuts)}
    jobs = dict(s.execute(ACTIVE_JOBS).all())
    alerts, stored, agents = s.execute(TOTALS).one()
    return {
        "hosts": sum(by.values()), "protected": by.get("protected", 0),
        "breached": by.get("breached", 0), "unprotected": by.get("unprotected", 0),
        "jobs": {k: int(v) for k, v in jobs.items()},
        "open_alerts": int(alerts or 0),
        "stored_bytes": int(stored or 0),
        "agents": int(agents or 0),
    }


RPOS = select(Policy.rpo_seconds).distinct()
ACTIVE_JOBS = select(Job.state, func.count()).where(Job.state.in_(ACTIVE)).group_by(Job.state)
TOTALS = select(
    select(func.count()).select_from(Alert).where(Alert.resolved.is_(None)).scalar_subquery(),
    select(func.sum(Point.stored_bytes)).scalar_subquery(),
    select(func.count()).select_from(Agent).where(Agent.disabled.is_(False)).scalar_subquery(),
)


@lru_cache(maxsize=64)
def _classify(rpos: tuple[int, ...]) -> Select[Any]:
    """Hosts counted by state, for these distinct RPO targets (cut-off `:cutN` per target);
    built once per set of targets."""
    hosts = select(
        Host.enabled, Host.policy_id,
        # one probe of (host_id, created) per host
        select(func.max(Point.created)).where(Point.host_id == Host.id)
        .scalar_subquery().label("newest"),
    ).subquery()
    newest = hosts.c.newest
    late = or_(false(), *[(Policy.rpo_seconds == r) & (newest < bindparam(f"cut{i}"))
                          for i, r in enumerate(rpos)])
    state = case(
        (or_(hosts.c.enabled.is_(False), Policy.enabled.is_(False)), "disabled"),
        (or_(newest.is_(None), Policy.id.is_(None)), "unprotected"),
        (late, "breached"),
        else_="protected",
    )
    classified = (select(state.label("st")).select_from(hosts)
                  .join(Policy, Policy.id == hosts.c.policy_id, isouter=True).subquery())
    return select(classified.c.st, func.count()).group_by(classified.c.st)


@router.get("/kinds", response_model=KindsOut, tags=["meta"])
def kinds(_p: Viewer) -> dict[str, Any]:
    """Installed job kinds and source types (each source type's fields for forms)."""
    load_plugins()
    return {
        "jobs": {k: {"description": v.description, "needs_host": v.needs_host}
                 for k, v in sorted(KINDS.items())},
        "sources": {k: {"description": v.description, "fields": v.fields}
                    for k, v in sorted(SOURCES.items())},
        "platforms": {k: {"description": v.description, "credentials": v.credentials,
                          "options": v.options} for k, v in sorted(platform_types().items())},
    }
