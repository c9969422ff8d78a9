"""Notifications (issue 17): every alert kind reaches a webhook (HMAC-signed), a chat hook
and an SMTP mailbox (STARTTLS, log-in) exactly once; routing by kind and severity; a
receiver that is down gets its messages when it comes back, in order and without
duplicates, across a server restart; the test button; the protection report. Both
catalogs. The notifier is driven pass by pass (`tick(now)`): no sleeping on timers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from openbdr.control import alerts
from openbdr.control.app import ServerConfig, create_app
from openbdr.control.db import transaction
from openbdr.control.models import Host, Job, NotifyDelivery, Point, utcnow
from openbdr.control.notify import Notifier

from ..helpers import openbdr
from .conftest import ServerProc, wait_for
from .data import target_and_policy
from .notifyfixtures import Mailbox, Receiver, valid_signature

SECRET = "s3cret-hmac-key-of-the-hook"
SEVERITY = {"rpo_breached": "error", "job_failed": "error", "point_damaged": "critical",
            "drill_failed": "critical", "vm_missing": "error", "vm_disks_changed": "warning",
            "copy_behind": "error", "repository_full": "warning"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Mailbox]:
    m = Mailbox(tmp_path)
    yield m
    m.stop()


class Api:
    def __init__(self, catalog_url: str, data: Path) -> None:
        self.app = create_app(ServerConfig(data, catalog_url, workers=0, scheduler=False))
        self.svc = self.app.state.services
        self.http = TestClient(self.app)
        self.http.__enter__()
        token = (data / "admin.token").read_text().strip()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def __call__(self, method: str, path: str, want: int = 200, **kw: Any) -> Any:
        r = self.http.request(method, "/api/v1" + path, **kw)
        assert r.status_code == want, r.text
        return r.json() if r.content and r.headers["content-type"].startswith("application/json") \
            else r.text

    def notifier(self, **kw: Any) -> Notifier:
        kw.setdefault("full_percent", None)  # the capacity watch: where a test says
        return Notifier(self.svc.factory, self.svc.box, self.svc.server_id, retry=5.0, **kw)

    def close(self) -> None:
        self.http.__exit__(None, None, None)


@pytest.fixture
def api(catalog_url: str, tmp_path: Path) -> Iterator[Api]:
    a = Api(catalog_url, tmp_path / "data")
    yield a
    a.close()


def _host(api: Api, tmp: Path, name: str = "web1") -> int:
    with transaction(api.svc.factory) as s:
        t, p = target_and_policy(s, tmp / "repo")
        (tmp / "repo").mkdir(exist_ok=True)
        h = Host(name=name, source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                 policy_id=p.id, disks=[])
        s.add(h)
        s.flush()
        return h.id


def _mail_channel(api: Api, mailbox: Mailbox, name: str, **extra: Any) -> dict[str, Any]:
    return api("POST", "/notify/channels", 201, json={
        "name": name, "type": "email", "smtp_host": "127.0.0.1", "smtp_port": mailbox.port,
        "security": "starttls", "username": Mailbox.USER, "password": Mailbox.PASSWORD,
        "sender": "openbdr@example.org", "recipients": ["oncall@example.org"],
        "ca_file": str(mailbox.cert), **extra})


def test_each_alert_kind_reaches_every_channel_once(
        api: Api, receiver: Receiver, mailbox: Mailbox, tmp_path: Path) -> None:
    hook = api("POST", "/notify/channels", 201, json={
        "name": "hook", "type": "webhook", "url": receiver.url + "/hook", "secret": SECRET,
        "min_severity": "warning"})
    assert hook["secret"] is None and hook["has_secret"]
    crit = api("POST", "/notify/channels", 201, json={
        "name": "pager", "type": "webhook", "url": receiver.url + "/pager",
        "min_severity": "critical", "resolved": False})
    generated = crit["secret"]
    assert generated and len(generated) >= 32
    api("POST", "/notify/channels", 201, json={
        "name": "chat", "type": "chat", "url": receiver.url + "/chat/T0/B0/xyz"})
    api("POST", "/notify/channels", 201, json={
        "name": "drills", "type": "webhook", "url": receiver.url + "/drills", "secret": SECRET,
        "kinds": ["drill_failed"], "min_severity": "info"})
    _mail_channel(api, mailbox, "mail")
    # secrets are never returned, nor the chat hook's URL (its path is the credential)
    listed = api("GET", "/notify/channels")
    text = str(listed)
    assert SECRET not in text and generated not in text and Mailbox.PASSWORD not in text
    assert "xyz" not in text
    if api.svc.engine.dialect.name == "sqlite":  # nor stored in clear
        stored = Path(str(api.svc.engine.url.database)).read_bytes()
        for secret in (SECRET, generated, Mailbox.PASSWORD, "/chat/T0/B0/xyz"):
            assert secret.encode() not in stored

    host_id = _host(api, tmp_path)
    with transaction(api.svc.factory) as s:
        for kind, severity in SEVERITY.items():
            if kind == "repository_full":
                continue  # opened by the notifier itself, below
            # a multi-line message (a job's error with a traceback) too
            alerts.open_alert(s, kind, f"{kind} happened\nline two", host_id=host_id,
                              severity=severity)
        # the same cause again while the alert is open: no second notification
        alerts.open_alert(s, "job_failed", "job_failed again", host_id=host_id,
                          severity="error")
    # repository_full: a directory target's file system above the threshold
    assert api.notifier(full_percent=0.0).check_capacity() == 1
    n = api.notifier()
    stats = n.tick()
    assert stats["delivered"] == 2 * len(SEVERITY) + 2 + 1 + len(SEVERITY), stats

    got = receiver.accepted("/hook")
    assert sorted(b["alert"]["kind"] for _, b in got) == sorted(SEVERITY)
    for headers, body in got:
        raw = next(b for h, b, p, _ in receiver.hits if h is headers)
        assert valid_signature(SECRET, headers, raw)
        assert headers["x-openbdr-event"] == body["event"] == "alert.opened"
        assert headers["x-openbdr-delivery"] == str(body["delivery"])
        a = body["alert"]
        assert a["severity"] == SEVERITY[a["kind"]]
        assert a["message"].startswith(a["kind"] if a["kind"] != "repository_full"
                                       else "repository dr is")
        assert (a["host"], a["subject"]) == (("web1", None) if a["kind"] != "repository_full"
                                             else (None, "target:dr"))
    assert not valid_signature("another secret", *next(
        (h, b) for h, b, p, _ in receiver.hits if p == "/hook"))
    # routing: the pager gets only critical alerts, the drills hook only drill failures
    pager = receiver.accepted("/pager")
    assert sorted(b["alert"]["kind"] for _, b in pager) == ["drill_failed", "point_damaged"]
    assert all(valid_signature(generated, h, raw) for h, raw, p, _ in receiver.hits
               if p == "/pager")
    assert [b["alert"]["kind"] for _, b in receiver.accepted("/drills")] == ["drill_failed"]
    chat = receiver.accepted("/chat/T0/B0/xyz")
    assert len(chat) == len(SEVERITY)
    assert all(set(b) == {"text"} and b["text"].startswith("[OpenBDR]") for _, b in chat)
    # email: one message per kind, STARTTLS and log-in, a plain-text and an HTML part
    assert len(mailbox.messages) == len(SEVERITY) and mailbox.logins
    subjects = sorted(m["Subject"] for m in mailbox.messages)
    for kind in SEVERITY:
        assert sum(kind in s for s in subjects) == 1, (kind, subjects)
    plain, html = mailbox.parts(mailbox.messages[0])
    assert "severity:" in plain and "<html" in html
    assert mailbox.messages[0]["To"] == "oncall@example.org"

    # nothing is sent twice
    assert n.tick()["delivered"] == 0
    # a resolved notice: to the channels that want it (not the pager)
    with transaction(api.svc.factory) as s:
        alerts.resolve(s, "drill_failed", host_id)
    n.tick()
    resolved = [b for _, b in receiver.accepted("/hook") if b["event"] == "alert.resolved"]
    assert [b["alert"]["kind"] for b in resolved] == ["drill_failed"]
    assert resolved[0]["alert"]["resolved"]
    assert len(receiver.accepted("/pager")) == 2
    assert sum("RESOLVED" in m["Subject"] for m in mailbox.messages) == 1
    # space freed: repository_full is resolved
    api.notifier(full_percent=100.0).check_capacity()
    assert "repository_full" not in {a["kind"] for a in api("GET", "/alerts")}
    n.tick()
    assert sum(b["alert"]["kind"] == "repository_full" for _, b in receiver.accepted("/hook")
               if b["event"] == "alert.resolved") == 1
    states = {d["state"] for d in api("GET", "/notify/deliveries?limit=1000")}
    assert states == {"delivered"}
    # a host forgotten with an undelivered message: the message still goes, as it was
    receiver.status = 500
    with transaction(api.svc.factory) as s:
        alerts.open_alert(s, "drill_failed", "drill failed at the end", host_id=host_id,
                          severity="critical")
    n.tick()
    api("DELETE", "/hosts/web1", 204)
    receiver.status = 200
    n.tick(utcnow() + timedelta(hours=1))
    last = receiver.accepted("/hook")[-1][1]
    assert last["alert"]["message"] == "drill failed at the end" and last["alert"]["host"] == "web1"


def test_a_receiver_that_is_down_gets_everything_once_when_back(
        catalog_url: str, tmp_path: Path) -> None:
    down = Receiver()  # nothing listens on its port yet: connection refused
    api = Api(catalog_url, tmp_path / "data")
    try:
        api("POST", "/notify/channels", 201, json={
            "name": "hook", "type": "webhook", "url": down.url + "/in", "secret": SECRET})
        host_id = _host(api, tmp_path)
        with transaction(api.svc.factory) as s:
            alerts.open_alert(s, "job_failed", "sync job 1 failed", host_id=host_id,
                              severity="error")
            alerts.open_alert(s, "point_damaged", "point p1 is damaged", host_id=host_id,
                              severity="critical")
        now = utcnow()
        n = api.notifier()
        assert n.tick(now)["retry"] == 1  # the channel failed: its queue waits, in order
        d = api("GET", "/notify/deliveries?channel=hook")
        assert {x["state"] for x in d} == {"pending"}
        assert "cannot reach" in (d[-1]["last_error"] or "")
        assert api("GET", "/notify/channels/hook")["pending"] == 2
        # back, but failing (500): still pending, retried later
        down.status = 500
        down.start()
        assert n.tick(now + timedelta(hours=1))["retry"] == 1
        assert len(down.hits) == 1 and not down.accepted("/in")
    finally:
        api.close()  # the server stops with two messages pending

    # a new server life on the same catalog and data directory
    api = Api(catalog_url, tmp_path / "data")
    try:
        down.status = 200
        n = api.notifier()
        assert n.tick(utcnow() + timedelta(hours=2))["delivered"] == 2
        assert n.tick(utcnow() + timedelta(hours=3))["delivered"] == 0
        got = down.accepted("/in")
        assert [b["alert"]["kind"] for _, b in got] == ["job_failed", "point_damaged"]
        assert len({b["delivery"] for _, b in got}) == 2
        assert all(valid_signature(SECRET, h, raw) for h, raw, p, st in down.hits if st == 200)
        d = api("GET", "/notify/deliveries?channel=hook")
        assert [x["state"] for x in d] == ["delivered", "delivered"]
        assert max(x["attempts"] for x in d) == 3
        # delivered messages are forgotten after a month, pending ones are not
        assert n.prune(utcnow() + timedelta(days=31)) == 2
        # a message nobody takes for longer than its expiry is given up, not retried forever
        down.status = 503
        with transaction(api.svc.factory) as s:
            alerts.open_alert(s, "drill_failed", "drill failed", host_id=host_id,
                              severity="critical")
        later = utcnow() + timedelta(days=2)
        assert n.tick(later)["expired"] == 1
        with transaction(api.svc.factory) as s:
            assert s.scalars(select(NotifyDelivery.state)
                             .order_by(NotifyDelivery.id.desc())).first() == "expired"
    finally:
        api.close()
        down.stop()


def test_the_test_button_and_the_protection_report(
        api: Api, receiver: Receiver, mailbox: Mailbox, tmp_path: Path) -> None:
    api("POST", "/notify/channels", 201, json={
        "name": "hook", "type": "webhook", "url": receiver.url + "/t", "secret": SECRET})
    ok = api("POST", "/notify/channels/hook/test")
    assert ok["ok"], ok
    (h, body), = receiver.accepted("/t")
    assert body["event"] == "test" and valid_signature(SECRET, h, receiver.hits[0][1])
    receiver.status = 500
    bad = api("POST", "/notify/channels/hook/test")
    assert not bad["ok"] and "500" in bad["message"]
    api("POST", "/notify/channels/nope/test", 404)
    assert [d["state"] for d in api("GET", "/notify/deliveries")] == ["failed", "delivered"]
    # bad input: one clear error
    err = api("POST", "/notify/channels", 400, json={"name": "x", "type": "webhook",
                                                      "url": "ftp://nowhere"})
    assert "URL" in err["error"]["message"]
    err = api("POST", "/notify/channels", 400, json={"name": "x", "type": "email",
                                                      "smtp_host": "mx"})
    assert "From" in err["error"]["message"]
    api("POST", "/notify/channels", 400, json={"name": "x", "type": "chat",
                                                "url": "http://c/h", "kinds": ["nope"]})

    # the report: one host meets its RPO with a drill-verified point, one does not
    now = utcnow()
    ok_id = _host(api, tmp_path, "web1")
    with transaction(api.svc.factory) as s:
        late = Host(name="db1", source={"type": "image", "paths": ["/y"]},
                    target_id=s.get_one(Host, ok_id).target_id,
                    policy_id=s.get_one(Host, ok_id).policy_id, disks=[])
        s.add(late)
        s.flush()
        s.add_all([
            Point(host_id=ok_id, point_id="p-ok", created=now - timedelta(seconds=60),
                  consistency="crash", status="verified", verified=now - timedelta(hours=1)),
            Point(host_id=late.id, point_id="p-old", created=now - timedelta(hours=3),
                  consistency="crash"),
            Job(kind="sync", state="failed", host_id=late.id, error="disk unreadable",
                finished=now - timedelta(minutes=5)),
        ])
        alerts.open_alert(s, "rpo_breached", "db1 is late", host_id=late.id, severity="error")
    rep = api("GET", "/reports/protection?format=json")
    hosts = {h["host"]: h for h in rep["hosts"]}
    assert hosts["web1"]["rpo_met"] is True and hosts["db1"]["rpo_met"] is False
    assert hosts["web1"]["last_drill_verified_point"] == "p-ok"
    assert hosts["db1"]["last_drill_verified"] is None
    assert rep["summary"] == {"hosts": 2, "rpo_met": 1, "rpo_missed": 1, "unprotected": 0,
                              "disabled": 0, "drill_verified_hosts": 1, "failed_jobs": 1,
                              "open_alerts": 1}
    assert rep["failed_jobs"][0]["error"] == "disk unreadable"
    page = api("GET", "/reports/protection?format=html")
    assert "<!DOCTYPE html>" in page and "db1" in page and "missed" in page
    assert "<script" not in page and "http" not in page.split("</style>")[0]  # self-contained

    # sent on its schedule to the channels that subscribed, once per period
    _mail_channel(api, mailbox, "weekly-mail", report="weekly", kinds=["drill_failed"])
    n = api.notifier()
    n.tick(utcnow() + timedelta(days=1))
    assert not mailbox.messages  # weekly: not yet
    n.tick(utcnow() + timedelta(days=8))
    assert len(mailbox.messages) == 1, api("GET", "/notify/deliveries")
    (msg,) = mailbox.messages
    # made at its (simulated) time, a week on: both hosts are late by then
    assert "protection report: 0/2 host(s) meet their RPO target" in msg["Subject"]
    plain, html = mailbox.parts(msg)
    assert "db1" in html and "p-ok" in html and "2 do not" in plain.replace("\n", " ")
    n.tick(utcnow() + timedelta(days=8, hours=1))
    assert len(mailbox.messages) == 1


def _cli(srv: ServerProc, *args: str, check: bool = True) -> Any:
    env = {**os.environ, "OPENBDR_SERVER": srv.url, "OPENBDR_TOKEN": srv.token}
    return openbdr(*args, check=check, env=env)


def test_cli_and_the_server_s_own_notifier(server: ServerProc, receiver: Receiver,
                                           tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    got = _cli(server, "notify", "channel", "add", "hook", "--type", "webhook",
               "--url", receiver.url + "/c", "--secret-file", str(secret),
               "--kind", "job_failed", "--min-severity", "error")
    assert "job_failed, severity ≥ error" in got.stdout
    assert "hook" in _cli(server, "notify", "channel", "list").stdout
    assert "delivered to hook" in _cli(server, "notify", "test", "hook").stdout
    assert SECRET not in _cli(server, "notify", "channel", "show", "hook").stdout
    _cli(server, "notify", "channel", "add", "dead", "--type", "chat",
         "--url", "http://127.0.0.1:9/x")
    failed = _cli(server, "notify", "channel", "test", "dead", check=False)
    assert failed.returncode == 1 and "cannot reach" in failed.stdout
    # a real failure in the server: a sync of an image that does not exist
    repo = tmp_path / "repo"
    _cli(server, "target", "add", "dr", str(repo), "--init")
    _cli(server, "host", "add", "web1", "--target", "dr", "--source", "image:/nonexistent.img")
    _cli(server, "host", "sync", "web1", check=False)
    hit = wait_for(lambda: [b for _, b in receiver.accepted("/c") if b["event"] != "test"],
                   timeout=120, what="the job_failed notification")
    assert hit[0]["alert"]["kind"] == "job_failed" and hit[0]["alert"]["host"] == "web1"
    report = tmp_path / "report.html"
    _cli(server, "report", "protection", "--html", str(report))
    assert "web1" in report.read_text()
    assert "host(s)" in _cli(server, "report", "protection").stdout
    _cli(server, "notify", "channel", "remove", "dead")
    assert "dead" not in _cli(server, "notify", "channel", "list").stdout


def test_a_killed_server_delivers_after_restart_once(catalog_url: str, tmp_path: Path) -> None:
    """SIGKILL of the server while its receiver is down: the restarted server delivers
    the pending alert once the receiver is back, exactly once."""
    down = Receiver()  # refuses connections until started
    srv = ServerProc(tmp_path / "data", catalog_url,
                     ["--tick", "0.5", "--workers", "1", "--notify-retry", "0.5",
                      "--repository-full", "100"])
    srv.start()
    try:
        with srv.client() as c:
            assert c.post("/notify/channels", json={
                "name": "hook", "type": "webhook", "url": down.url + "/k",
                "secret": SECRET}).status_code == 201
            assert c.post("/targets", json={"name": "dr", "url": str(tmp_path / "repo"),
                                            "init": True}).status_code == 201
            assert c.post("/hosts", json={
                "name": "web1", "target": "dr",
                "source": {"type": "image", "paths": ["/nonexistent.img"]}}).status_code == 201
            assert c.post("/hosts/web1/sync", json={}).status_code == 201
            tried = wait_for(lambda: [d for d in c.get("/notify/deliveries").json()
                                      if d["attempts"] >= 1], timeout=120,
                             what="a failed delivery attempt")
            assert tried[0]["state"] == "pending" and "cannot reach" in tried[0]["last_error"]
        srv.kill()
        down.start()
        srv.start()
        with srv.client() as c:
            done = wait_for(lambda: [d for d in c.get("/notify/deliveries").json()
                                     if d["state"] == "delivered"], timeout=120,
                            what="the delivery after the restart")
        got = down.accepted("/k")
        assert [b["alert"]["kind"] for _, b in got] == ["job_failed"]
        assert got[0][1]["delivery"] == done[0]["id"]
        assert valid_signature(SECRET, got[0][0], down.hits[0][1])
    finally:
        srv.stop()
        down.stop()


def test_one_notifier_among_server_processes(api: Api, receiver: Receiver,
                                             tmp_path: Path) -> None:
    """Two processes' notifiers on one catalog: only the lease holder sends."""
    api("POST", "/notify/channels", 201, json={
        "name": "hook", "type": "webhook", "url": receiver.url + "/l", "secret": SECRET})
    host_id = _host(api, tmp_path)
    first = api.notifier()
    other = Notifier(api.svc.factory, api.svc.box, "other-process", full_percent=None)
    assert first.tick() == {"reports": 0, "delivered": 0, "retry": 0, "expired": 0,
                            "pruned": 0}
    with transaction(api.svc.factory) as s:
        alerts.open_alert(s, "job_failed", "failed", host_id=host_id, severity="error")
    assert other.tick() == {}  # not the leader: sends nothing
    assert first.tick()["delivered"] == 1
    assert len(receiver.accepted("/l")) == 1
