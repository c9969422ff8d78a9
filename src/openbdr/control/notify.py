"""Notifications: alerts and protection reports delivered to webhooks, mailboxes and chats.

Opening or resolving an alert (`alerts`) queues one `NotifyDelivery` per channel whose
routing matches (kinds, minimum severity, resolved notices), in the alert's own
transaction. The `Notifier` thread (one leader among server processes, through a
`service_locks` lease) sends what is due and retries failures with exponential back-off
until delivered or expired: the queue lives in the catalog, so a restart loses nothing.
Delivery is at least once (a crash between the send and its record repeats it): receivers
deduplicate on the delivery id. The same thread queues protection reports on their
schedule and watches the free space of directory repositories.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import smtplib
import ssl
import threading
import time
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlparse

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .. import __version__
from ..errors import OpenBDRError
from . import alerts
from .crypto import SecretBox
from .db import transaction
from .models import Alert, Host, NotifyChannel, NotifyDelivery, ServiceLock, Target, utcnow
from .report import protection_report, render_html, render_text

log = logging.getLogger(__name__)

CHANNEL_TYPES = ("webhook", "email", "chat")
RANK = {s: i for i, s in enumerate(alerts.SEVERITIES)}
REPORT_PERIODS = {"daily": 86400.0, "weekly": 7 * 86400.0}
#: webhook payload version (docs/notifications.md)
PAYLOAD_VERSION = 1
#: finished deliveries (delivered, failed, expired) are deleted after this many days
KEEP_DELIVERIES_DAYS = 30.0


class DeliveryError(OpenBDRError):
    """A channel did not accept a message (it is retried)."""


# -- routing ------------------------------------------------------------------------
def routes(c: NotifyChannel, kind: str, severity: str, event: str) -> bool:
    """Whether channel `c` gets `event` (opened/resolved) of an alert of this kind."""
    if not c.enabled:
        return False
    if c.kinds and kind not in c.kinds:
        return False
    if RANK.get(severity, 1) < RANK.get(c.min_severity, 1):
        return False
    return event != "resolved" or bool(c.resolved)


def alert_json(a: Alert, host: str | None) -> dict[str, Any]:
    return {"id": a.id, "kind": a.kind, "severity": a.severity, "host": host,
            "subject": a.subject, "job_id": a.job_id, "message": a.message,
            "opened": a.opened.isoformat() if a.opened else None,
            "resolved": a.resolved.isoformat() if a.resolved else None}


def alert_event(s: Session, a: Alert, event: str) -> int:
    """Queue `alert.<event>` for every channel whose routing matches; returns how many."""
    channels = [c for c in s.scalars(select(NotifyChannel).where(NotifyChannel.enabled.is_(True)))
                if routes(c, a.kind, a.severity, event)]
    if not channels:
        return 0
    host = s.get(Host, a.host_id) if a.host_id else None
    payload = {"event": f"alert.{event}", "alert": alert_json(a, host.name if host else None)}
    for c in channels:
        s.add(NotifyDelivery(channel_id=c.id, alert_id=a.id, event=f"alert.{event}",
                             payload=payload))
    return len(channels)


# -- messages -----------------------------------------------------------------------
def headline(payload: dict[str, Any]) -> str:
    """One line for a chat, a mail subject or a log."""
    event = payload["event"]
    if event == "test":
        return f"OpenBDR test message from {payload.get('server', 'the server')}"
    if event == "report":
        s = payload["report"]["summary"]
        return (f"OpenBDR protection report: {s['rpo_met']}/{s['hosts']} host(s) meet their "
                f"RPO target, {s['open_alerts']} open alert(s)")
    a = payload["alert"]
    about = f" on {a['host']}" if a.get("host") else (f" ({a['subject']})"
                                                       if a.get("subject") else "")
    if event == "alert.resolved":
        return f"[OpenBDR] RESOLVED {a['kind']}{about}: {a['message']}"
    return f"[OpenBDR] {a['severity'].upper()} {a['kind']}{about}: {a['message']}"


def text_body(payload: dict[str, Any]) -> str:
    if payload["event"] == "report":
        return render_text(payload["report"])
    if payload["event"] == "test":
        return (headline(payload) + "\nIf you read this, the channel "
                f"{payload.get('channel')!r} works.")
    a = payload["alert"]
    lines = [headline(payload), "",
             f"kind:     {a['kind']}", f"severity: {a['severity']}",
             f"host:     {a.get('host') or '—'}", f"opened:   {a['opened']}"]
    if a.get("subject"):
        lines.append(f"about:    {a['subject']}")
    if a.get("resolved"):
        lines.append(f"resolved: {a['resolved']}")
    if a.get("job_id"):
        lines.append(f"job:      {a['job_id']}")
    lines += ["", a["message"]]
    return "\n".join(lines)


def html_body(payload: dict[str, Any]) -> str:
    if payload["event"] == "report":
        return render_html(payload["report"])
    import html as h

    rows = "".join(f"<li>{h.escape(line)}</li>" for line in text_body(payload).splitlines()[2:]
                   if line)
    return (f'<!DOCTYPE html><html><body style="font-family:sans-serif">'
            f"<h2>{h.escape(headline(payload))}</h2><ul>{rows}</ul></body></html>")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 over `<timestamp>.<body>` with the channel's secret."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str,
                     tolerance: float = 300.0, now: float | None = None) -> bool:
    """What a receiver checks (docs/notifications.md): the MAC, and a recent timestamp."""
    try:
        fresh = abs((now or time.time()) - int(timestamp)) <= tolerance
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


# -- senders ------------------------------------------------------------------------
def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    try:
        r = httpx.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"cannot reach {url}: {exc}") from None
    if r.status_code >= 300:
        raise DeliveryError(f"{url} answered {r.status_code}: {r.text[:200]}")


def send_webhook(config: dict[str, Any], secrets: dict[str, Any], delivery: int,
                 payload: dict[str, Any], timeout: float = 10.0) -> None:
    body = json.dumps({"version": PAYLOAD_VERSION, "delivery": delivery,
                       "sent": utcnow().isoformat(), **payload},
                      separators=(",", ":"), default=str).encode()
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": f"OpenBDR/{__version__}",
               "X-OpenBDR-Event": payload["event"], "X-OpenBDR-Delivery": str(delivery),
               "X-OpenBDR-Timestamp": ts}
    if secrets.get("secret"):
        headers["X-OpenBDR-Signature"] = sign(str(secrets["secret"]), ts, body)
    _post(str(config["url"]), body, headers, timeout)


def send_chat(url: str, payload: dict[str, Any], timeout: float = 10.0) -> None:
    """Slack-compatible incoming webhook: `{"text": …}` (Mattermost, Rocket.Chat, bridges).
    The hook's URL is its credential: it is kept sealed."""
    text = headline(payload) if payload["event"].startswith("alert.") else text_body(payload)
    body = json.dumps({"text": text}).encode()
    _post(url, body, {"Content-Type": "application/json"}, timeout)


def send_email(config: dict[str, Any], secrets: dict[str, Any], delivery: int,
               payload: dict[str, Any], timeout: float = 20.0) -> None:
    msg = EmailMessage()
    subject = " ".join(headline(payload).split())  # a header: one line
    msg["Subject"] = subject if len(subject) < 200 else subject[:197] + "…"
    msg["From"] = str(config["from"])
    msg["To"] = ", ".join(config["to"])
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(f"openbdr.{delivery}")
    msg["X-OpenBDR-Event"] = payload["event"]
    msg["X-OpenBDR-Delivery"] = str(delivery)
    msg.set_content(text_body(payload))
    msg.add_alternative(html_body(payload), subtype="html")
    host, port = str(config["host"]), int(config.get("port") or 587)
    security = config.get("security") or "starttls"
    ctx = ssl.create_default_context(cafile=config.get("ca_file") or None)
    try:
        smtp: smtplib.SMTP = (smtplib.SMTP_SSL(host, port, timeout=timeout, context=ctx)
                              if security == "tls" else smtplib.SMTP(host, port, timeout=timeout))
        with smtp:
            smtp.ehlo()
            if security == "starttls":
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if config.get("username"):
                smtp.login(str(config["username"]), str(secrets.get("password") or ""))
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"SMTP {host}:{port}: {exc}") from None


def send(kind: str, config: dict[str, Any], secrets: dict[str, Any], delivery: int,
         payload: dict[str, Any]) -> None:
    if kind == "webhook":
        send_webhook(config, secrets, delivery, payload)
    elif kind == "chat":
        send_chat(str(secrets.get("url") or config["url"]), payload)
    elif kind == "email":
        send_email(config, secrets, delivery, payload)
    else:
        raise DeliveryError(f"unknown channel type {kind!r}")


def check_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """A channel's settings, checked; raises OpenBDRError with what to fix."""
    if kind not in CHANNEL_TYPES:
        raise OpenBDRError(f"unknown channel type {kind!r}",
                           f"use one of: {', '.join(CHANNEL_TYPES)}")
    if kind in ("webhook", "chat"):
        url = str(config.get("url") or "")
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).hostname:
            raise OpenBDRError(f"bad {kind} URL {url!r}", "give an http:// or https:// URL")
        return {"url": url}
    to = config.get("to") or []
    if isinstance(to, str):
        to = [t.strip() for t in to.split(",") if t.strip()]
    if not config.get("host") or not config.get("from") or not to:
        raise OpenBDRError("an email channel needs an SMTP host, a From and a To address",
                           "give host, from and to (a list of addresses)")
    if any("@" not in str(a) for a in [config["from"], *to]):
        raise OpenBDRError("an email address has no @", "check from and to")
    security = config.get("security") or "starttls"
    if security not in ("starttls", "tls", "none"):
        raise OpenBDRError(f"bad SMTP security {security!r}", "use starttls, tls or none")
    port = int(config.get("port") or (465 if security == "tls" else 587))
    if not 0 < port < 65536:
        raise OpenBDRError(f"bad SMTP port {port}")
    out = {"host": str(config["host"]), "port": port, "security": security,
           "from": str(config["from"]), "to": [str(a) for a in to]}
    for k in ("username", "ca_file"):
        if config.get(k):
            out[k] = str(config[k])
    return out


# -- the delivery worker ------------------------------------------------------------
def hold_lease(factory: sessionmaker[Session], name: str, owner: str, ttl: float) -> bool:
    """Take or renew the `service_locks` lease `name` (one leader among processes)."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl)
    with transaction(factory) as s:
        got = s.execute(
            update(ServiceLock)
            .where(ServiceLock.name == name,
                   (ServiceLock.owner == owner) | (ServiceLock.expires < now))
            .values(owner=owner, expires=expires)
        ).rowcount  # type: ignore[attr-defined]
        if got == 1:
            return True
    try:
        with transaction(factory) as s:
            if s.get(ServiceLock, name) is not None:
                return False
            s.add(ServiceLock(name=name, owner=owner, expires=expires))
        return True
    except IntegrityError:
        return False


def backoff(attempts: int, base: float) -> float:
    return float(min(base * 2 ** min(attempts - 1, 12), 3600.0))


def directory_usage(url: str) -> float | None:
    """Used fraction of the file system of a directory repository (None: not a directory)."""
    if "://" in url and not url.startswith("file://"):
        return None
    path = url.removeprefix("file://")
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if not st.f_blocks:
        return None
    return 1.0 - st.f_bavail / st.f_blocks


class Notifier(threading.Thread):
    def __init__(self, factory: sessionmaker[Session], box: SecretBox, owner: str,
                 poll: float = 2.0, retry: float = 15.0, expire: float = 86400.0,
                 full_percent: float | None = 90.0, capacity_every: float = 300.0) -> None:
        super().__init__(name="notifier", daemon=True)
        self.factory, self.box, self.owner = factory, box, owner
        self.poll, self.retry, self.expire = poll, retry, expire
        self.full_percent, self.capacity_every = full_percent, capacity_every
        self._last_capacity: float | None = None
        self._last_prune: float | None = None
        self._renewed = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.poll):
            try:
                self.tick()
            except Exception as exc:  # the catalog may be restarting: next time
                log.warning("notifier pass failed: %s", exc)

    def stop(self) -> None:
        self.stopping.set()

    @property
    def lease_ttl(self) -> float:
        return max(30.0, self.poll * 6)

    def leader(self) -> bool:
        self._renewed = time.monotonic()
        return hold_lease(self.factory, "notifier", self.owner, self.lease_ttl)

    def tick(self, now: datetime | None = None) -> dict[str, int]:
        if not self.leader():
            return {}
        now = now or utcnow()
        stats = {"reports": self.queue_reports(now)}
        mono = time.monotonic()
        if self.full_percent is not None and (
                self._last_capacity is None or mono - self._last_capacity >= self.capacity_every):
            self._last_capacity = mono
            stats["full"] = self.check_capacity()
        stats.update(self.deliver(now))
        if self._last_prune is None or mono - self._last_prune >= 600.0:
            self._last_prune = mono
            stats["pruned"] = self.prune(now)
        return stats

    def prune(self, now: datetime) -> int:
        """Forget finished deliveries after `KEEP_DELIVERIES_DAYS` (pending ones stay)."""
        before = now - timedelta(days=KEEP_DELIVERIES_DAYS)
        with transaction(self.factory) as s:
            return int(s.execute(delete(NotifyDelivery).where(
                NotifyDelivery.state != "pending", NotifyDelivery.created < before)).rowcount)  # type: ignore[attr-defined]

    def deliver(self, now: datetime) -> dict[str, int]:
        """Send what is due, oldest first; a channel that fails waits for its next try
        with the rest of its queue (messages stay in order, a dead receiver is not
        hammered)."""
        with transaction(self.factory) as s:
            due = s.execute(
                select(NotifyDelivery.id, NotifyDelivery.payload, NotifyDelivery.created,
                       NotifyDelivery.attempts, NotifyChannel.id, NotifyChannel.type,
                       NotifyChannel.config, NotifyChannel.secrets, NotifyChannel.enabled)
                .join(NotifyChannel, NotifyChannel.id == NotifyDelivery.channel_id)
                .where(NotifyDelivery.state == "pending", NotifyDelivery.next_attempt <= now)
                .order_by(NotifyDelivery.id).limit(200)
            ).all()
        stats = {"delivered": 0, "retry": 0, "expired": 0}
        failed: set[int] = set()
        for did, payload, created, attempts, cid, kind, config, sealed, enabled in due:
            if (now - created).total_seconds() > self.expire:
                self._record(did, "expired", attempts, now, "not delivered in time")
                stats["expired"] += 1
                continue
            if cid in failed or not enabled:
                continue
            # slow channels: keep the lease, or another process would send these again
            if time.monotonic() - self._renewed > self.lease_ttl / 3 and not self.leader():
                break
            try:
                send(kind, config or {}, self.box.open(sealed), did, payload)
            except Exception as exc:
                failed.add(cid)
                self._record(did, "pending", attempts + 1, now, str(exc))
                stats["retry"] += 1
                log.info("notification %s not delivered (attempt %d): %s", did,
                         attempts + 1, exc)
                continue
            self._record(did, "delivered", attempts + 1, now, None)
            stats["delivered"] += 1
        return stats

    def _record(self, did: int, state: str, attempts: int, now: datetime,
                error: str | None) -> None:
        with transaction(self.factory) as s:
            d = s.get(NotifyDelivery, did)
            if d is None:
                return  # its channel was removed meanwhile
            d.state, d.attempts, d.last_error = state, attempts, error
            if state == "delivered":
                d.delivered = utcnow()
            elif state == "pending":
                d.next_attempt = now + timedelta(seconds=backoff(attempts, self.retry))

    def queue_reports(self, now: datetime) -> int:
        """A protection report per channel whose period has passed since its last one."""
        n = 0
        with transaction(self.factory) as s:
            due = [c for c in s.scalars(select(NotifyChannel).where(
                NotifyChannel.enabled.is_(True), NotifyChannel.report.is_not(None)))
                if c.report in REPORT_PERIODS and (now - (c.report_last or c.created))
                .total_seconds() >= REPORT_PERIODS[c.report]]
            reports: dict[str, dict[str, Any]] = {}
            for c in due:
                period = str(c.report)
                if period not in reports:
                    reports[period] = protection_report(s, now, REPORT_PERIODS[period])
                s.add(NotifyDelivery(channel_id=c.id, event="report", created=now,
                                     next_attempt=now,
                                     payload={"event": "report", "report": reports[period]}))
                c.report_last = now
                n += 1
        return n

    def check_capacity(self) -> int:
        """Open `repository_full` for directory repositories above `full_percent` used
        (critical above 98 %), resolve it when space is freed. S3 has no capacity to read."""
        if self.full_percent is None:
            return 0
        with transaction(self.factory) as s:
            targets = s.execute(select(Target.name, Target.url)).all()
        usage = {name: directory_usage(url) for name, url in targets}
        full = 0
        with transaction(self.factory) as s:
            for name, used in usage.items():
                subject = f"target:{name}"
                if used is None:
                    continue
                if used * 100 >= self.full_percent:
                    full += 1
                    alerts.open_alert(
                        s, "repository_full",
                        f"repository {name} is {used * 100:.1f} % full (threshold "
                        f"{self.full_percent:g} %): free space, or retention and gc cannot "
                        "keep up and syncs will fail",
                        severity="critical" if used >= 0.98 else "warning", subject=subject)
                else:
                    alerts.resolve(s, "repository_full", None, subject=subject)
        return full


# -- the test button ----------------------------------------------------------------
def send_test(factory: sessionmaker[Session], box: SecretBox, name: str,
              server: str) -> dict[str, Any]:
    """Send a test message to channel `name` now; recorded as a delivery (one try)."""
    with transaction(factory) as s:
        c = s.scalar(select(NotifyChannel).where(NotifyChannel.name == name))
        if c is None:
            raise OpenBDRError(f"no notification channel {name!r}")
        payload = {"event": "test", "channel": name, "server": server}
        d = NotifyDelivery(channel_id=c.id, event="test", payload=payload, state="failed")
        s.add(d)
        s.flush()
        did, kind, config, secrets = d.id, c.type, dict(c.config or {}), box.open(c.secrets)
    ok, message = True, f"test message delivered to {name}"
    try:
        send(kind, config, secrets, did, payload)
    except Exception as exc:
        ok, message = False, str(exc)
    with transaction(factory) as s:
        d = s.get_one(NotifyDelivery, did)
        d.attempts = 1
        d.state = "delivered" if ok else "failed"
        d.delivered = utcnow() if ok else None
        d.last_error = None if ok else message
    return {"ok": ok, "message": message, "delivery": did}
