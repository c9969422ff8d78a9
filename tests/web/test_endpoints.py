"""The console's own endpoints, in process: roles, chart series, drill ids, the event stream."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from openbdr.control.db import transaction
from openbdr.control.models import Host, Point, utcnow
from openbdr.web.events import snapshot
from openbdr.web.history import series

from ..control.api import make_api

ROUTES = ["/api/v1/console/dashboard", "/api/v1/console/drills",
          "/api/v1/console/drills/web1/d1", "/api/v1/console/drills/web1/d1/report.json"]


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[FastAPI, dict[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="openbdr-web-") as tmp:
        data = Path(tmp) / "data"
        app, tokens = make_api(data, f"sqlite:///{Path(tmp) / 'catalog.db'}")
        yield app, tokens
        app.state.services.engine.dispose()


def _h(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def test_roles_match_the_rest_api(api: tuple[FastAPI, dict[str, str]]) -> None:
    """Reads: every user role may; no token → 401; an agent credential → 403."""
    app, tokens = api
    with TestClient(app) as c:
        for path in ROUTES:
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers=_h(tokens["agent"])).status_code == 403, path
            for role in ("viewer", "operator", "admin"):
                got = c.get(path, headers=_h(tokens[role]))
                assert got.status_code in (200, 404), (path, role, got.text)
                if got.status_code == 404:
                    assert got.json()["error"]["code"] == "not_found"
        assert c.get("/api/v1/console/events").status_code == 401
        assert c.get("/api/v1/console/events", headers=_h(tokens["agent"])).status_code == 403


def test_drill_ids_cannot_leave_the_drills_prefix(api: tuple[FastAPI, dict[str, str]]) -> None:
    app, tokens = api
    with TestClient(app) as c:
        for bad in ("..", ".hidden", "a%2F..%2Fconfig"):
            r = c.get(f"/api/v1/console/drills/web1/{bad}/report.json",
                      headers=_h(tokens["viewer"]))
            assert r.status_code in (404, 422), (bad, r.status_code)
        r = c.get("/api/v1/console/drills/web1/d1/config", headers=_h(tokens["viewer"]))
        assert r.status_code == 404


def test_console_is_served_with_a_strict_policy(api: tuple[FastAPI, dict[str, str]]) -> None:
    app, _ = api
    with TestClient(app) as c:
        r = c.get("/")
        assert r.status_code == 200 and 'src="/console/app.js"' in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        js = c.get("/console/app.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert "default-src 'self'" in js.headers["content-security-policy"]
        # every module the page preloads exists (a missing one is a console error)
        preloads = re.findall(r'rel="modulepreload" href="([^"]+)"', r.text)
        assert "/console/views/dashboard.js" in preloads
        for href in preloads:
            assert c.get(href).status_code == 200, href
        # nothing in the app refers to another origin
        static = Path(__file__).resolve().parents[2] / "src" / "openbdr" / "web" / "static"
        for f in static.rglob("*"):
            if f.suffix in (".js", ".css", ".html"):
                text = f.read_text()
                assert "http://" not in text.replace("http://www.w3.org", "") and \
                    "https://" not in text, f


def test_series_follow_the_points(api: tuple[FastAPI, dict[str, str]]) -> None:
    """Lag rises with time since the newest point and drops when a point lands."""
    app, _ = api
    svc = app.state.services
    now = utcnow()
    with transaction(svc.factory) as s:
        host = s.query(Host).filter_by(name="web1").one()
        for minutes, read in ((200, 10 << 20), (65, 30 << 20)):
            s.add(Point(host_id=host.id, point_id=f"p{minutes}", consistency="crash",
                        created=now - timedelta(minutes=minutes), read_bytes=read,
                        stored_bytes=read // 2))
    try:
        with svc.factory() as s:
            out = series(s, now, hours=3, buckets=6)  # 30-minute steps
        # instants now-150, -120, -90, -60, -30, now; the point 65 min ago resets the lag
        assert out["step_seconds"] == pytest.approx(1800)
        lag = [round(x / 60) for x in out["rpo_max"]]
        assert lag == [50, 80, 110, 5, 35, 65]
        step = out["step_seconds"]
        # throughput counts the points inside the window only
        assert sum(out["read_rate"]) * step == pytest.approx(30 << 20, rel=1e-5)
        assert sum(out["stored_rate"]) * step == pytest.approx(15 << 20, rel=1e-5)
    finally:
        with transaction(svc.factory) as s:
            s.query(Point).filter(Point.point_id.in_(["p200", "p65"])).delete()


def test_event_snapshot_changes_with_the_catalog(api: tuple[FastAPI, dict[str, str]]) -> None:
    app, tokens = api
    svc = app.state.services
    jobs, before = snapshot(svc.factory)
    with TestClient(app) as c:
        r = c.post("/api/v1/hosts/web1/sync", headers=_h(tokens["operator"]), json={})
        assert r.status_code == 201
        job_id = r.json()["id"]
        jobs, after = snapshot(svc.factory)
        assert after != before
        assert [j["id"] for j in jobs] == [job_id] and jobs[0]["host"] == "web1"
        assert c.post(f"/api/v1/jobs/{job_id}/cancel",
                      headers=_h(tokens["operator"])).status_code == 200
    jobs, last = snapshot(svc.factory)
    assert jobs == [] and last != after


def test_dashboard_counts(api: tuple[FastAPI, dict[str, str]]) -> None:
    app, tokens = api
    with TestClient(app) as c:
        d: dict[str, Any] = c.get("/api/v1/console/dashboard", headers=_h(tokens["viewer"])).json()
    assert d["counts"]["hosts"] == 1 and [h["name"] for h in d["hosts"]] == ["web1"]
    assert d["counts"]["unprotected"] == 1
    assert len(d["history"]["t"]) == 48
    json.dumps(d)
