"""Finished jobs are pruned after the retention period, in batches, on both catalogs; a
host's newest finished job of each kind, active jobs and recent ones stay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import func, select

from openbdr.control.crypto import SecretBox
from openbdr.control.db import make_engine, migrate, session_factory, transaction
from openbdr.control.jobs import JobQueue
from openbdr.control.models import Alert, Host, Job, JobLog, utcnow
from openbdr.control.scheduler import Scheduler

from .data import target_and_policy


def test_old_finished_jobs_go_newest_per_host_and_kind_stay(
    catalog_url: str, tmp_path: Path
) -> None:
    engine = make_engine(catalog_url)
    migrate(engine)
    factory = session_factory(engine)
    now = utcnow()
    old, recent = now - timedelta(days=30), now - timedelta(hours=1)
    with transaction(factory) as s:
        t, p = target_and_policy(s, tmp_path / "repo", enabled=False)  # no syncs to start
        a, b = (Host(name=n, source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                     policy_id=p.id, disks=[], enabled=True) for n in ("a", "b"))
        s.add_all([a, b])
        s.flush()
        base = {"target_id": t.id, "params": {}, "progress": {}, "result": {}}

        def job(host: Host, kind: str, state: str, when: object) -> Job:
            j = Job(kind=kind, state=state, host_id=host.id, created=when,
                    finished=when if state in ("succeeded", "failed") else None, **base)
            s.add(j)
            s.flush()
            s.add(JobLog(job_id=j.id, message=f"{kind} {state}"))
            return j

        gone = [job(a, "sync", "succeeded", old) for _ in range(7)]
        failed = job(a, "sync", "failed", old)  # an alert names it
        s.add(Alert(kind="job_failed", host_id=a.id, job_id=failed.id, message="x"))
        gone += [job(b, "sync", "succeeded", old - timedelta(days=1))]
        keep = [
            job(a, "sync", "succeeded", recent),  # recent
            job(a, "drill", "succeeded", old),  # a's newest drill, however old
            job(b, "sync", "succeeded", old),  # b's newest sync
            job(a, "verify", "running", old),  # active
        ]
        gone.append(failed)
        # gc runs per target (no host): the target's newest stays, like a host's
        gcs = [Job(kind="gc", state="succeeded", target_id=t.id, created=when, finished=when,
                   params={}, progress={}, result={}) for when in (old - timedelta(days=1), old)]
        s.add_all(gcs)
        s.flush()
        s.add_all([JobLog(job_id=g.id, message="gc succeeded") for g in gcs])
        gone.append(gcs[0])
        keep.append(gcs[1])

    queue = JobQueue(factory, SecretBox(Fernet.generate_key()))
    assert queue.prune(now - timedelta(days=7), batch=3) == 3  # batches, oldest first
    sched = Scheduler(factory, queue, SecretBox(Fernet.generate_key()), "test", keep_jobs=7 * 86400)
    assert sched.tick(now)["pruned"] == len(gone) - 3
    assert sched.tick(now)["pruned"] == 0  # not again before ten minutes

    with factory() as s:
        left = set(s.scalars(select(Job.id)))
        assert left == {j.id for j in keep}
        assert s.scalar(select(func.count()).select_from(JobLog)) == len(keep)
        alert = s.scalar(select(Alert))
        assert alert is not None and alert.job_id is None  # unlinked, not deleted
    engine.dispose()
