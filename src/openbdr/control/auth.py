"""Who is calling: users' API tokens with roles, or an agent's own credential.

Roles are ordered viewer < operator < admin; agents hold no role and reach only the
`/agent/…` routes, and only for jobs of their own pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from .apierrors import ApiError
from .crypto import digest
from .models import Agent, ApiToken, AuditEntry, User, utcnow
from .services import Services

RANK = {"viewer": 1, "operator": 2, "admin": 3}
bearer = HTTPBearer(auto_error=False, description="an API token, or an agent credential")


@dataclass
class Principal:
    name: str
    role: str  # viewer, operator, admin, or agent
    user_id: int | None = None
    agent_id: int | None = None
    pool: str | None = None


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def session(svc: Annotated[Services, Depends(services)]) -> Iterator[Session]:
    """A transaction per request, committed before the response leaves (read-your-writes)."""
    with svc.factory() as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


DB = Annotated[Session, Depends(session, scope="function")]


# built once: every request authenticates, and building the expressions cost more than
# running them
AGENT_BY_CREDENTIAL = select(Agent).where(Agent.credential_hash == bindparam("h"))
TOKEN_BY_HASH = (select(ApiToken, User).join(User, User.id == ApiToken.user_id)
                 .where(ApiToken.token_hash == bindparam("h")))


def principal(
    s: DB, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if creds is None or not creds.credentials:
        raise ApiError(401, "unauthorized", "this endpoint needs a bearer token",
                       "send `Authorization: Bearer <token>`")
    h = digest(creds.credentials)
    now = utcnow()
    if creds.credentials.startswith("obda_"):
        agent = s.scalar(AGENT_BY_CREDENTIAL, {"h": h})
        if agent is None or agent.disabled:
            raise ApiError(401, "unauthorized", "unknown or disabled agent credential",
                           "enrol the agent again")
        agent.last_seen = now
        return Principal(agent.name, "agent", agent_id=agent.id, pool=agent.pool)
    row = s.execute(TOKEN_BY_HASH, {"h": h}).first()
    if row is None:
        raise ApiError(401, "unauthorized", "unknown API token", "ask an admin for a token")
    token, user = row
    if token.expires is not None and token.expires < now:
        raise ApiError(401, "unauthorized", f"API token {token.name} has expired",
                       "ask an admin for a new token")
    if token.last_used is None or (now - token.last_used).total_seconds() > 60:
        token.last_used = now
    return Principal(user.name, user.role, user_id=user.id)


def require(role: str) -> Callable[[Principal], Principal]:
    def check(p: Annotated[Principal, Depends(principal)]) -> Principal:
        if role == "agent":
            if p.role != "agent":
                raise ApiError(403, "forbidden", "only agents may call this endpoint")
            return p
        if RANK.get(p.role, 0) < RANK[role]:
            raise ApiError(403, "forbidden", f"{p.name} ({p.role}) may not do this: "
                           f"it needs the {role} role", "ask an admin")
        return p

    return check


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
AgentP = Annotated[Principal, Depends(require("agent"))]


def audit(s: Session, who: Principal | str, action: str, object_type: str, object_id: object,
          **detail: object) -> None:
    s.add(AuditEntry(actor=who if isinstance(who, str) else who.name, action=action,
                     object_type=object_type, object_id=str(object_id), detail=dict(detail)))
