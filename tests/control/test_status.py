"""Host status at a glance (`control.status`): the REST API's rows and the console's
dashboard rows agree, on both catalogs, for every protection state."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from openbdr.control.db import make_engine, migrate, session_factory, transaction
from openbdr.control.models import Alert, Host, Job, Point, Target, utcnow
from openbdr.control.routes_admin import overview
from openbdr.control.status import collect, host_rows
from openbdr.web.dashboard import ORDER, dashboard_row
from openbdr.web.history import series

from .data import target_and_policy


def _catalog(url: str) -> tuple[Engine, sessionmaker[Session]]:
    engine = make_engine(url)
    migrate(engine)
    return engine, session_factory(engine)


def test_rows_show_each_state_and_the_last_jobs(catalog_url: str, tmp_path: Path) -> None:
    engine, factory = _catalog(catalog_url)
    now = utcnow()
    with transaction(factory) as s:
        t, p = target_and_policy(s, tmp_path / "repo")
        ages = {"ok": 60, "warn": 500, "late": 900, "never": None, "off": 60}
        hosts = {}
        for name, age in ages.items():
            h = Host(name=name, source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                     policy_id=p.id, disks=[], enabled=name != "off")
            s.add(h)
            s.flush()
            hosts[name] = h
            if age is not None:
                for k, extra in enumerate((3600, 0)):  # an older point, then the newest
                    s.add(Point(host_id=h.id, point_id=f"{name}-{k}", consistency="crash",
                                created=now - timedelta(seconds=age + extra), disks=[],
                                drill={}, read_bytes=10, stored_bytes=4))
        ok = hosts["ok"].id
        base = {"target_id": t.id, "params": {}, "progress": {}}
        s.add_all([
            Job(kind="sync", state="failed", host_id=ok, error="x", result={},
                created=now - timedelta(hours=2), finished=now - timedelta(hours=2), **base),
            Job(kind="sync", state="succeeded", host_id=ok, created=now - timedelta(minutes=2),
                finished=now - timedelta(minutes=1),
                result={"point": {"id": "ok-1"}, "adopted": False}, **base),
            Job(kind="drill", state="succeeded", host_id=ok, result={"verdict": "passed"},
                created=now - timedelta(hours=1), finished=now - timedelta(minutes=30), **base),
            Job(kind="sync", state="running", host_id=hosts["late"].id, result={},
                created=now, **{**base, "progress": {"percent": 40.0}}),
            # queued behind the running one: the running one is the host's active job
            Job(kind="verify", state="queued", host_id=hosts["late"].id, result={},
                created=now, **base),
            Alert(kind="rpo_breached", host_id=hosts["late"].id, message="late"),
        ])
    with factory() as s:
        every = list(s.scalars(select(Host).order_by(Host.name)))
        rows = {r["name"]: r for r in host_rows(s, every, now)}
        facts = collect(s, None, now)
        brief = {h.name: dashboard_row(facts, h.id, h.name, h.enabled, h.policy_id)
                 for h in every}
        counts = overview(s, None)  # type: ignore[arg-type]
    engine.dispose()
    states = {"ok": "ok", "warn": "warning", "late": "breached", "never": "unprotected",
              "off": "disabled"}
    for name, state in states.items():
        st = rows[name]["status"]
        assert st["protection"] == state == brief[name]["protection"], name
        assert st["points"] == brief[name]["points"] == (0 if name == "never" else 2)
        assert st["stored_bytes"] == brief[name]["stored_bytes"] == st["points"] * 4
    assert rows["ok"]["status"]["last_point"]["id"] == "ok-1"
    assert rows["ok"]["status"]["last_point"]["age_seconds"] == 60.0
    assert brief["ok"]["age_seconds"] == 60.0 and brief["never"]["age_seconds"] is None
    # the newest finished sync, without the point's manifest; the drill's verdict
    assert rows["ok"]["status"]["last_sync"]["state"] == "succeeded"
    assert rows["ok"]["status"]["last_sync"]["result"] == {"adopted": False}
    assert brief["ok"]["last_sync"]["state"] == "succeeded"
    assert brief["ok"]["last_drill"]["verdict"] == "passed"
    assert rows["ok"]["status"]["last_drill"]["result"] == {"verdict": "passed"}
    late = rows["late"]["status"]
    assert late["active_job"]["progress"] == {"percent": 40.0} and late["open_alerts"] == 1
    assert brief["late"]["active_job"]["progress"] == {"percent": 40.0}
    assert brief["late"]["open_alerts"] == 1 and brief["never"]["last_sync"] is None
    assert sorted(brief, key=lambda n: ORDER[brief[n]["protection"]])[0] == "late"
    # the overview's counts, classified by the database, agree with the rows
    assert (counts["hosts"], counts["protected"], counts["breached"],
            counts["unprotected"]) == (5, 2, 1, 1)


def test_chart_series_on_both_catalogs(catalog_url: str, tmp_path: Path) -> None:
    """The dashboard's chart groups points in the database (CASE buckets): same numbers
    on SQLite and PostgreSQL, and a disabled host does not count."""
    engine, factory = _catalog(catalog_url)
    now = utcnow()
    with transaction(factory) as s:
        t = Target(name="dr", url=str(tmp_path / "repo"))
        s.add(t)
        s.flush()
        on = Host(name="on", source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                  disks=[], enabled=True)
        off = Host(name="off", source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                   disks=[], enabled=False)
        s.add_all([on, off])
        s.flush()
        for host, minutes, read in ((on, 200, 10 << 20), (on, 65, 30 << 20), (off, 900, 1)):
            s.add(Point(host_id=host.id, point_id=f"p{minutes}", consistency="crash",
                        created=now - timedelta(minutes=minutes), read_bytes=read,
                        stored_bytes=read // 2, disks=[], drill={}))
    with factory() as s:
        out = series(s, now, hours=3, buckets=6)  # instants now-150, -120, … now (minutes)
    engine.dispose()
    assert [round(x / 60) for x in out["rpo_max"]] == [50, 80, 110, 5, 35, 65]
    assert out["rpo_median"] == out["rpo_max"]
    step = out["step_seconds"]
    assert sum(out["read_rate"]) * step == pytest.approx(30 << 20, rel=1e-5)  # window only
    assert out["stored_rate"][3] * step == pytest.approx(15 << 20, rel=1e-5)  # [-90, -60)
