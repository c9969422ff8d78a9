"""Catalog: migrations upgrade an older catalog in place and match the models; the
scheduler keeps points under the RPO target and raises/clears alerts; leases expire."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from openbdr.control.alerts import open_alert
from openbdr.control.crypto import SecretBox
from openbdr.control.db import current_revision, make_engine, migrate, session_factory, transaction
from openbdr.control.jobs import JobQueue, LeaseLost
from openbdr.control.mirror import point_json, upsert_point
from openbdr.control.models import Alert, Base, Host, Job, JobLog, Point, Target, utcnow
from openbdr.control.registry import load_plugins
from openbdr.control.routes_catalog import point_out
from openbdr.control.scheduler import Scheduler, sync_lead
from openbdr.control.schemas import PointOut
from openbdr.store.manifest import RestorePoint

from .data import target_and_policy


def test_upgrade_from_first_revision_keeps_data(catalog_url: str) -> None:
    engine = make_engine(catalog_url)
    migrate(engine, "0001")
    assert current_revision(engine) == "0001"
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO targets (id, name, url, created) VALUES (1, 'dr', '/r', :t)"),
            {"t": utcnow()})
        conn.execute(text(
            "INSERT INTO hosts (id, name, source, target_id, disks, enabled, created) "
            "VALUES (1, 'old', '{\"type\": \"image\", \"paths\": [\"/a\"]}', 1, '[]', true, :t)"),
            {"t": utcnow()})
        conn.execute(text(
            "INSERT INTO jobs (id, kind, state, host_id, params, progress, result, priority, "
            "attempts, max_attempts, created_by, created) VALUES (1, 'sync', 'queued', 1, '{}', "
            "'{}', '{}', 0, 0, 5, 'me', :t)"), {"t": utcnow()})
        for k, (read, stored) in enumerate([(7 << 20, 3 << 20), (5 << 20, 1 << 20)]):
            conn.execute(text(
                "INSERT INTO points (host_id, point_id, created, consistency, status, size, "
                "read_bytes, stored_bytes, codec, mode, duration_s, disks, drill) VALUES "
                "(1, :p, :t, 'crash', 'ok', 0, :r, :s, 'none', 'full', 1.0, '[]', '{}')"),
                {"p": f"p{k}", "t": utcnow(), "r": read, "s": stored})
    migrate(engine)
    assert current_revision(engine) == "0008"
    factory = session_factory(engine)
    with factory() as s:
        host = s.scalar(select(Host).where(Host.name == "old"))
        assert host is not None and host.source["paths"] == ["/a"] and host.pool is None
        # the byte counters start where the sums over the points were
        assert (host.read_bytes_total, host.stored_bytes_total) == (12 << 20, 4 << 20)
        job = s.get(Job, 1)
        assert job is not None and job.state == "queued" and job.pool is None
        assert [p.notes for p in s.scalars(select(Point))] == [[], []]  # added by 0008
    with engine.connect() as conn:  # the migrations build exactly what the models say
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()


def _catalog(url: str, tmp: Path) -> tuple[JobQueue, Scheduler]:
    load_plugins()
    engine = make_engine(url)
    migrate(engine)
    factory = session_factory(engine)
    box = SecretBox.from_file(tmp / "key")
    queue = JobQueue(factory, box, lease_ttl=30)
    return queue, Scheduler(factory, queue, box, "test", tick=5, refresh_every=1e9)


def test_scheduler_keeps_rpo_and_alerts(catalog_url: str, tmp_path: Path) -> None:
    queue, sched = _catalog(catalog_url, tmp_path)
    now = utcnow()
    with transaction(queue.factory) as s:
        t, p = target_and_policy(s, tmp_path / "repo")
        for name, age in (("fresh", 60), ("due", 560), ("late", 900), ("never", None)):
            h = Host(name=name, source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                     policy_id=p.id, disks=[], enabled=True)
            s.add(h)
            s.flush()
            if age is not None:
                s.add(Point(host_id=h.id, point_id=f"{name}-1", consistency="crash",
                            created=now - timedelta(seconds=age), disks=[], drill={},
                            duration_s=5.0))
    stats = sched.tick(now)
    assert stats["synced"] == 3 and stats["breached"] == 1
    with queue.factory() as s:
        synced = {s.get_one(Host, j.host_id).name for j in s.scalars(select(Job))}
        assert synced == {"due", "late", "never"}
        alerts = s.scalars(select(Alert).where(Alert.resolved.is_(None))).all()
        assert [s.get_one(Host, a.host_id).name for a in alerts] == ["late"]
    # a second tick adds nothing: one sync per host at a time
    assert sched.tick(now)["synced"] == 0
    # the late host gets a fresh point: its alert is resolved
    with transaction(queue.factory) as s:
        late = s.scalar(select(Host).where(Host.name == "late"))
        assert late is not None
        s.add(Point(host_id=late.id, point_id="late-2", consistency="crash", created=now,
                    disks=[], drill={}))
    sched.tick(now + timedelta(seconds=1))
    with queue.factory() as s:
        assert s.scalars(select(Alert).where(Alert.resolved.is_(None))).all() == []
    assert 0 < sync_lead(600, 5, 5) < 300


def test_expired_lease_is_requeued_and_old_worker_refused(catalog_url: str,
                                                           tmp_path: Path) -> None:
    queue, _ = _catalog(catalog_url, tmp_path)
    queue.lease_ttl = 0.5
    with transaction(queue.factory) as s:
        t = Target(name="dr", url="/r")
        s.add(t)
        s.flush()
        h = Host(name="h", source={"type": "image", "paths": ["/x"]}, target_id=t.id, disks=[],
                 enabled=True)
        s.add(h)
        s.flush()
        jid = queue.enqueue(s, "sync", host=h).id
    spec = queue.lease("w1", None)
    assert spec is not None and spec.id == jid and spec.attempt == 1
    assert queue.lease("w2", None) is None  # taken
    import time

    time.sleep(1.0)
    assert queue.reap() == 1
    spec2 = queue.lease("w2", None)
    assert spec2 is not None and spec2.attempt == 2
    try:
        queue.heartbeat(jid, "w1")
        raise AssertionError("the first worker's heartbeat must be refused")
    except LeaseLost:
        pass
    assert queue.finish(jid, "w2", "failed", error="boom") == "failed"
    with transaction(queue.factory) as s:
        a = s.scalars(select(Alert)).all()
        assert len(a) == 1 and a[0].kind == "job_failed" and "boom" in a[0].message
        again = open_alert(s, "job_failed", "x", host_id=a[0].host_id)
        assert again.id == a[0].id  # one open alert per kind and host


def test_concurrent_workers_lease_different_jobs(catalog_url: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    queue, _ = _catalog(catalog_url, tmp_path)
    with transaction(queue.factory) as s:
        t = Target(name="dr", url="/r")
        s.add(t)
        s.flush()
        for i in range(8):
            h = Host(name=f"h{i}", source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                     disks=[], enabled=True)
            s.add(h)
            s.flush()
            queue.enqueue(s, "sync", host=h)
    with ThreadPoolExecutor(8) as pool:
        specs = list(pool.map(lambda i: queue.lease(f"w{i}", None), range(8)))
    assert all(specs) and len({sp.id for sp in specs if sp}) == 8
    assert queue.lease("w9", None) is None
    # the last progress and logs travel with the outcome
    first = specs[0]
    assert first is not None
    assert queue.finish(first.id, "w0", "succeeded", {}, progress={"percent": 100.0},
                        logs=[("info", "all done")]) == "succeeded"
    with queue.factory() as s:
        job = s.get_one(Job, first.id)
        assert job.progress == {"percent": 100.0}
        messages = s.scalars(select(JobLog.message).where(JobLog.job_id == first.id)).all()
        assert "all done" in messages


def test_point_notes_reach_the_catalog_and_the_api(catalog_url: str, tmp_path: Path) -> None:
    """How a source took its snapshot (e.g. the guest agent's freeze) is kept with the point
    in the catalog and given by the API, so the console can say why a point is crash-only."""
    queue, _ = _catalog(catalog_url, tmp_path)
    notes = ["guest agent froze 2 file system(s)", "disk vdb: shut off"]
    point = RestorePoint("vm1", "p1", "2026-12-07T10:00:00+00:00", "filesystem", [], notes=notes)
    with transaction(queue.factory) as s:
        t = Target(name="dr", url="/r")
        s.add(t)
        s.flush()
        h = Host(name="vm1", source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                 disks=[], enabled=True)
        s.add(h)
        s.flush()
        upsert_point(s, h, point_json(point))
    with queue.factory() as s:
        row = s.scalar(select(Point))
        assert row is not None and row.notes == notes
        out = PointOut.model_validate(point_out(row, "vm1"))
        assert out.notes == notes and out.consistency == "filesystem"
