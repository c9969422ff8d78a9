"""Notification channels (webhook, email, chat), their routing and test button, the
deliveries, and the protection report (`GET /reports/protection`)."""

from __future__ import annotations

import secrets as pysecrets
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import OpenBDRError
from . import alerts
from .apierrors import RESPONSES, ApiError, not_found
from .auth import DB, Admin, Operator, Viewer, audit, services
from .models import NotifyChannel, NotifyDelivery
from .notify import CHANNEL_TYPES, REPORT_PERIODS, check_config, send_test
from .report import protection_report, render_html
from .schemas import NAME, Name, Strict
from .services import Services

router = APIRouter(prefix="/api/v1", responses=RESPONSES)
Svc = Annotated[Services, Depends(services)]
Severity = Literal["info", "warning", "error", "critical"]
Period = Literal["daily", "weekly"]


class ChannelIn(Strict):
    name: str = Name
    type: Literal["webhook", "email", "chat"]
    url: str | None = Field(default=None, max_length=2048,
                            description="webhook or chat: the http(s) URL to POST to (a chat "
                            "URL is sealed: it is the credential)")
    secret: str | None = Field(default=None, min_length=16, max_length=256,
                               description="webhook: the HMAC key (generated and shown once "
                               "when omitted); sealed, never returned")
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] | None = None
    username: str | None = Field(default=None, max_length=255)
    password: str | None = Field(default=None, max_length=1024,
                                 description="SMTP password: sealed, never returned")
    sender: str | None = Field(default=None, max_length=255, description="email: From")
    recipients: list[str] = Field(default=[], max_length=100, description="email: To")
    ca_file: str | None = Field(default=None, max_length=1024,
                                description="email: CA certificates (PEM) to trust for TLS")
    kinds: list[str] = Field(default=[], max_length=64,
                             description="alert kinds to send (none: every kind); see "
                             "GET /notify/kinds")
    min_severity: Severity = "warning"
    resolved: bool = Field(default=True, description="also send resolved notices")
    report: Period | None = Field(default=None, description="send the protection report")
    enabled: bool = True


class ChannelPatch(Strict):
    url: str | None = Field(default=None, max_length=2048)
    secret: str | None = Field(default=None, min_length=16, max_length=256)
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] | None = None
    username: str | None = Field(default=None, max_length=255)
    password: str | None = Field(default=None, max_length=1024)
    sender: str | None = Field(default=None, max_length=255)
    recipients: list[str] | None = Field(default=None, max_length=100)
    ca_file: str | None = Field(default=None, max_length=1024)
    kinds: list[str] | None = Field(default=None, max_length=64)
    min_severity: Severity | None = None
    resolved: bool | None = None
    report: Period | Literal["none"] | None = None
    enabled: bool | None = None


class DeliveryBrief(BaseModel):
    id: int
    event: str
    state: str
    attempts: int
    created: datetime
    delivered: datetime | None
    next_attempt: datetime
    last_error: str | None


class ChannelOut(BaseModel):
    id: int
    name: str
    type: str
    config: dict[str, Any] = Field(description="what may be shown: no secret")
    has_secret: bool
    kinds: list[str]
    min_severity: str
    resolved: bool
    report: str | None
    report_last: datetime | None
    enabled: bool
    created: datetime
    pending: int
    last_delivery: DeliveryBrief | None
    secret: str | None = Field(default=None, description="a generated webhook secret: "
                               "shown only in the answer that created it")


class DeliveryOut(DeliveryBrief):
    channel: str
    alert_id: int | None
    summary: str


class TestOut(BaseModel):
    ok: bool
    message: str
    delivery: int


class NotifyKindsOut(BaseModel):
    kinds: dict[str, str]
    severities: list[str]
    types: list[str]
    report_periods: list[str]


def channel_by_name(s: Session, name: str) -> NotifyChannel:
    c = s.scalar(select(NotifyChannel).where(NotifyChannel.name == name))
    if c is None:
        raise not_found(f"notification channel {name!r}",
                        "list them with GET /api/v1/notify/channels")
    return c


def brief(d: NotifyDelivery | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"id": d.id, "event": d.event, "state": d.state, "attempts": d.attempts,
            "created": d.created, "delivered": d.delivered, "next_attempt": d.next_attempt,
            "last_error": d.last_error}


def channel_out(s: Session, c: NotifyChannel, secret: str | None = None) -> dict[str, Any]:
    last = s.scalar(select(NotifyDelivery).where(NotifyDelivery.channel_id == c.id)
                    .order_by(NotifyDelivery.id.desc()).limit(1))
    pending = s.scalar(select(func.count()).select_from(NotifyDelivery).where(
        NotifyDelivery.channel_id == c.id, NotifyDelivery.state == "pending"))
    return {"id": c.id, "name": c.name, "type": c.type, "config": dict(c.config or {}),
            "has_secret": bool(c.secrets), "kinds": list(c.kinds or []),
            "min_severity": c.min_severity, "resolved": c.resolved, "report": c.report,
            "report_last": c.report_last, "enabled": c.enabled, "created": c.created,
            "pending": int(pending or 0), "last_delivery": brief(last), "secret": secret}


def _check_kinds(kinds: list[str]) -> list[str]:
    bad = [k for k in kinds if k not in alerts.KINDS]
    if bad:
        raise ApiError(400, "bad_request", f"unknown alert kind(s): {', '.join(bad)}",
                       f"use some of: {', '.join(alerts.KINDS)}")
    return sorted(set(kinds))


def _settings(kind: str, fields: dict[str, Any], sealed: dict[str, Any]
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shown config, sealed secrets) of a channel from API fields."""
    if kind == "email":
        raw = {"host": fields.get("smtp_host"), "port": fields.get("smtp_port"),
               "security": fields.get("security"), "username": fields.get("username"),
               "from": fields.get("sender"), "to": fields.get("recipients"),
               "ca_file": fields.get("ca_file")}
        if fields.get("password") is not None:
            sealed["password"] = fields["password"]
    else:
        raw = {"url": fields.get("url") or sealed.get("url")}
    try:
        config = check_config(kind, raw)
    except OpenBDRError as exc:
        raise ApiError(400, "bad_request", str(exc.args[0]), exc.hint) from None
    if kind == "chat":
        # a Slack-style hook URL is the credential itself: sealed, shown without its path
        sealed["url"] = config.pop("url")
        config["url"] = f"{urlparse(sealed['url']).scheme}://{urlparse(sealed['url']).netloc}/…"
    if kind == "webhook" and fields.get("secret"):
        sealed["secret"] = fields["secret"]
    return config, sealed


@router.get("/notify/kinds", response_model=NotifyKindsOut, tags=["notifications"])
def notify_kinds(_p: Viewer) -> dict[str, Any]:
    """Alert kinds a channel can subscribe to, severities, channel types, report periods."""
    return {"kinds": alerts.KINDS, "severities": list(alerts.SEVERITIES),
            "types": list(CHANNEL_TYPES), "report_periods": list(REPORT_PERIODS)}


@router.get("/notify/channels", response_model=list[ChannelOut], tags=["notifications"])
def list_channels(s: DB, _p: Operator) -> list[dict[str, Any]]:
    return [channel_out(s, c)
            for c in s.scalars(select(NotifyChannel).order_by(NotifyChannel.name))]


@router.post("/notify/channels", response_model=ChannelOut, status_code=201,
             tags=["notifications"])
def add_channel(body: ChannelIn, s: DB, p: Admin, svc: Svc) -> dict[str, Any]:
    """A channel with its routing; its secrets (webhook secret, SMTP password, chat URL) are
    sealed and never returned, but a generated webhook secret is shown in this answer."""
    if s.scalar(select(NotifyChannel.id).where(NotifyChannel.name == body.name)) is not None:
        raise ApiError(409, "conflict", f"notification channel {body.name!r} already exists")
    fields = body.model_dump()
    generated = None
    if body.type == "webhook" and not body.secret:
        generated = fields["secret"] = pysecrets.token_urlsafe(32)
    config, sealed = _settings(body.type, fields, {})
    c = NotifyChannel(name=body.name, type=body.type, config=config,
                      secrets=svc.box.seal(sealed), kinds=_check_kinds(body.kinds),
                      min_severity=body.min_severity, resolved=body.resolved,
                      report=body.report, enabled=body.enabled)
    s.add(c)
    s.flush()
    audit(s, p, "create", "notify_channel", body.name, type=body.type)
    return channel_out(s, c, generated)


@router.get("/notify/channels/{name}", response_model=ChannelOut, tags=["notifications"])
def show_channel(name: Annotated[str, Name], s: DB, _p: Operator) -> dict[str, Any]:
    return channel_out(s, channel_by_name(s, name))


@router.patch("/notify/channels/{name}", response_model=ChannelOut, tags=["notifications"])
def change_channel(name: Annotated[str, Name], body: ChannelPatch, s: DB, p: Admin,
                   svc: Svc) -> dict[str, Any]:
    """Change routing or settings; fields left out keep their value."""
    c = channel_by_name(s, name)
    given = body.model_dump(exclude_none=True)
    settings = {"url", "secret", "smtp_host", "smtp_port", "security", "username",
                "password", "sender", "recipients", "ca_file"}
    if given.keys() & settings:
        cfg = dict(c.config or {})
        fields = {"url": cfg.get("url") if c.type == "webhook" else None,
                  "smtp_host": cfg.get("host"), "smtp_port": cfg.get("port"),
                  "security": cfg.get("security"), "username": cfg.get("username"),
                  "sender": cfg.get("from"), "recipients": cfg.get("to"),
                  "ca_file": cfg.get("ca_file")}
        fields.update({k: v for k, v in given.items() if k in settings})
        c.config, sealed = _settings(c.type, fields, svc.box.open(c.secrets))
        c.secrets = svc.box.seal(sealed)
    if "kinds" in given:
        c.kinds = _check_kinds(given["kinds"])
    for k in ("min_severity", "resolved", "enabled"):
        if k in given:
            setattr(c, k, given[k])
    if "report" in given:
        c.report = None if given["report"] == "none" else given["report"]
    audit(s, p, "change", "notify_channel", name, fields=sorted(given))
    return channel_out(s, c)


@router.delete("/notify/channels/{name}", status_code=204, tags=["notifications"])
def remove_channel(name: Annotated[str, Name], s: DB, p: Admin) -> Response:
    """Remove a channel and its deliveries (pending ones are dropped)."""
    c = channel_by_name(s, name)
    for d in s.scalars(select(NotifyDelivery).where(NotifyDelivery.channel_id == c.id)):
        s.delete(d)
    s.delete(c)
    audit(s, p, "delete", "notify_channel", name)
    return Response(status_code=204)


@router.post("/notify/channels/{name}/test", response_model=TestOut, tags=["notifications"])
def test_channel(name: Annotated[str, Name], s: DB, p: Admin, svc: Svc) -> dict[str, Any]:
    """Send a test message now (one try) and say how it went; a failure is `ok: false`
    with the channel's answer, not an HTTP error."""
    channel_by_name(s, name)
    s.commit()  # no catalog lock is held while the channel answers
    got = send_test(svc.factory, svc.box, name, svc.server_id)
    audit(s, p, "test", "notify_channel", name, ok=got["ok"])
    return got


def _summary(d: NotifyDelivery) -> str:
    from .notify import headline

    try:
        return headline(d.payload)
    except (KeyError, TypeError):
        return d.event


@router.get("/notify/deliveries", response_model=list[DeliveryOut], tags=["notifications"])
def list_deliveries(
    s: DB, _p: Operator,
    channel: Annotated[str | None, Query(pattern=NAME, max_length=128)] = None,
    state: Annotated[Literal["pending", "delivered", "failed", "expired"] | None,
                     Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    """The newest deliveries first, with their state, attempts and last error."""
    q = select(NotifyDelivery, NotifyChannel.name).join(
        NotifyChannel, NotifyChannel.id == NotifyDelivery.channel_id)
    if channel:
        q = q.where(NotifyChannel.name == channel)
    if state:
        q = q.where(NotifyDelivery.state == state)
    return [{**(brief(d) or {}), "channel": cname, "alert_id": d.alert_id,
             "summary": _summary(d)}
            for d, cname in s.execute(q.order_by(NotifyDelivery.id.desc()).limit(limit))]


@router.get("/reports/protection", tags=["reports"],
            responses={200: {"content": {"text/html": {}, "application/json": {}},
                             "description": "the report as JSON or a self-contained HTML "
                             "page"}})
def report_protection(
    s: DB, _p: Viewer,
    format: Annotated[Literal["json", "html"], Query()] = "json",
    period: Annotated[Period, Query(description="failed jobs of the last day or week")]
    = "daily",
) -> Any:
    """What is protected, RPO met or not per host, newest point age, drill-verified points,
    failing jobs and open alerts."""
    report = protection_report(s, period=REPORT_PERIODS[period])
    if format == "html":
        return HTMLResponse(render_html(report))
    return report
