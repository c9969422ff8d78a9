"""Jobs as rows with leases and heartbeats.

A worker leases a queued job with a conditional UPDATE (only one wins, on SQLite and on
PostgreSQL alike), renews the lease with heartbeats that also carry progress and logs,
and learns from each heartbeat's answer whether an operator asked it to pause or
cancel. A lease that is not renewed expires: the job is queued again and resumes from
its checkpoint on whichever worker takes it next.

States: queued → running → succeeded | failed; running → pausing → paused → queued
(resume); running → cancelling → cancelled; queued/paused → paused/cancelled at once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from ..errors import OpenBDRError
from . import alerts
from .crypto import SecretBox
from .db import transaction
from .models import Host, Job, JobLog, Policy, Target, utcnow
from .platforms import host_pool, host_source, job_platform
from .registry import kind as job_kind

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "pausing", "paused", "cancelling")
RUNNING = ("running", "pausing", "cancelling")
FINAL = ("succeeded", "failed", "cancelled")
OUTCOMES = ("succeeded", "failed", "stopped", "retry")


class JobError(OpenBDRError):
    """A job operation that does not fit the job's state."""


class LeaseLost(OpenBDRError):
    """The worker no longer holds the job's lease (it expired and was re-leased)."""


@dataclass
class JobSpec:
    """Everything a worker needs to run a job without the catalog."""

    id: int
    kind: str
    attempt: int
    params: dict[str, Any]
    host: dict[str, Any] | None
    target: dict[str, Any] | None
    policy: dict[str, Any]
    first_started: str | None
    lease_ttl: float
    #: a platform job's platform (type, endpoint, credentials, options): only in the spec
    platform: dict[str, Any] | None = None
    #: a copy job's destination target (name, url, secrets): only in the spec
    copy_to: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        known = {f.name for f in fields(cls)}  # a newer server's extra fields are ignored
        return cls(**{k: v for k, v in data.items() if k in known})


def policy_json(policy: Policy | None) -> dict[str, Any]:
    if policy is None:
        return {"compression": "none", "compression_level": 1, "bwlimit": 0,
                "bandwidth_windows": [], "retention": {}}
    return {
        "name": policy.name,
        "rpo_seconds": policy.rpo_seconds,
        "compression": policy.compression,
        "compression_level": policy.compression_level,
        "bwlimit": policy.bwlimit,
        "bandwidth_windows": policy.bandwidth_windows,
        "retention": policy.retention,
        "full_resync_seconds": policy.full_resync_seconds,
        "drill_plan": policy.drill_plan,
        "copy_plan": policy.copy_plan or {},
    }


def enqueue(
    session: Session,
    kind: str,
    host: Host | None = None,
    target: Target | None = None,
    params: dict[str, Any] | None = None,
    created_by: str = "scheduler",
    priority: int = 0,
    pool: str | None = None,
) -> Job:
    """Queue a job (a module function: `on_success` hooks queue follow-up jobs with the
    session they are given). `pool`: where a job without a host runs (a platform's
    proxies); a job with neither host nor target is refused by the API (`start_job`)."""
    jk = job_kind(kind)
    if jk.needs_host and host is None:
        raise JobError(f"a {kind} job needs a host", "give the host's name")
    if host is not None and jk.exclusive:
        busy = session.scalar(
            select(Job.id).where(
                Job.host_id == host.id, Job.kind == kind, Job.state.in_(ACTIVE)
            )
        )
        if busy is not None:
            raise JobError(
                f"host {host.name} already has a {kind} job ({busy})",
                f"wait for job {busy}, or pause or cancel it",
            )
    params = dict(params or {})
    if jk.defaults is not None:
        params = jk.defaults(session, host, target, params)
    job = Job(
        kind=kind,
        state="queued",
        host_id=host.id if host else None,
        target_id=(host.target_id if host else target.id if target else None),
        pool=host_pool(session, host) if host else pool,
        params=params,
        progress={},
        result={},
        priority=priority,
        created_by=created_by,
    )
    session.add(job)
    session.flush()
    return job


class JobQueue:
    def __init__(
        self, factory: sessionmaker[Session], box: SecretBox, lease_ttl: float = 30.0
    ) -> None:
        self.factory = factory
        self.box = box
        self.lease_ttl = lease_ttl
        self.on_finish: list[Any] = []  # callables(job) for metrics

    # -- creating ----------------------------------------------------------------
    def enqueue(
        self,
        session: Session,
        kind: str,
        host: Host | None = None,
        target: Target | None = None,
        params: dict[str, Any] | None = None,
        created_by: str = "scheduler",
        priority: int = 0,
        pool: str | None = None,
    ) -> Job:
        """`pool`: where a job without a host runs (a platform's proxies); a host's jobs
        run where the host's pool (or its platform's) says."""
        return enqueue(session, kind, host, target, params, created_by, priority, pool)

    # -- leasing -----------------------------------------------------------------
    def lease(self, worker: str, pool: str | None, kinds: list[str] | None = None) -> JobSpec | None:
        """Take the next queued job for this pool (None: the embedded workers).

        One statement picks and takes it: on PostgreSQL the pick skips rows another worker
        has locked (`FOR UPDATE SKIP LOCKED`), so concurrent workers take different jobs
        instead of racing for the same one; SQLite runs writers one at a time anyway."""
        now = utcnow()
        pick = select(Job.id).where(
            Job.state == "queued",
            Job.pool.is_(None) if pool is None else Job.pool == pool,
            or_(Job.not_before.is_(None), Job.not_before <= now),
        )
        if kinds is not None:
            pick = pick.where(Job.kind.in_(kinds))
        pick = pick.order_by(Job.priority.desc(), Job.id).limit(1).with_for_update(skip_locked=True)
        with transaction(self.factory) as s:
            job_id = s.execute(
                update(Job)
                .where(Job.id == pick.scalar_subquery(), Job.state == "queued")
                .values(
                    state="running",
                    lease_owner=worker,
                    lease_expires=now + timedelta(seconds=self.lease_ttl),
                    attempts=Job.attempts + 1,
                    started=now,
                    first_started=func.coalesce(Job.first_started, now),
                    not_before=None,
                )
                .returning(Job.id)
            ).scalar()
            if job_id is None:
                return None
            job = s.get_one(Job, job_id)
            s.add(JobLog(job_id=job.id, message=f"leased by {worker} (attempt {job.attempts})"))
            return self._spec(s, job)

    def _spec(self, s: Session, job: Job) -> JobSpec:
        host = s.get(Host, job.host_id) if job.host_id else None
        target = s.get(Target, job.target_id) if job.target_id else None
        policy = s.get(Policy, host.policy_id) if host and host.policy_id else None
        return JobSpec(
            id=job.id,
            kind=job.kind,
            attempt=job.attempts,
            params=dict(job.params),
            host={"name": host.name, "source": host_source(s, host, self.box)} if host else None,
            target=(
                {"name": target.name, "url": target.url, "secrets": self.box.open(target.secrets)}
                if target
                else None
            ),
            policy=policy_json(policy),
            first_started=job.first_started.isoformat() if job.first_started else None,
            lease_ttl=self.lease_ttl,
            platform=job_platform(s, job, self.box),
            copy_to=self._copy_to(s, job, policy),
        )

    def _copy_to(self, s: Session, job: Job, policy: Policy | None) -> dict[str, Any] | None:
        """A copy job's destination: `params.to`, else its host's policy's copy target."""
        if job.kind != "copy":
            return None
        name = (job.params or {}).get("to") or ((policy.copy_plan or {}) if policy else {}).get("target")
        t = s.scalar(select(Target).where(Target.name == name)) if name else None
        if t is None:
            return None
        return {"name": t.name, "url": t.url, "secrets": self.box.open(t.secrets)}

    def _owned(self, s: Session, job_id: int, worker: str) -> Job:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.lease_owner != worker or job.state not in RUNNING:
            raise LeaseLost(
                f"worker {worker} no longer holds the lease of job {job_id}",
                "the job was re-leased after its lease expired; stop working on it",
            )
        return job

    def heartbeat(
        self,
        job_id: int,
        worker: str,
        progress: dict[str, Any] | None = None,
        logs: list[tuple[str, str]] | None = None,
    ) -> str:
        """Renew the lease; the answer is the state the operator wants (running, pausing…)."""
        with transaction(self.factory) as s:
            job = self._owned(s, job_id, worker)
            job.lease_expires = utcnow() + timedelta(seconds=self.lease_ttl)
            if progress:
                job.progress = progress
            for level, message in logs or []:
                s.add(JobLog(job_id=job_id, level=level, message=message[:4000]))
            return job.state

    def finish(
        self,
        job_id: int,
        worker: str,
        outcome: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        retry_after: float = 30.0,
        progress: dict[str, Any] | None = None,
        logs: list[tuple[str, str]] | None = None,
    ) -> str:
        """Record a worker's outcome, with its last progress and logs (one transaction
        instead of a last heartbeat and then this); returns the job's new state."""
        if outcome not in OUTCOMES:
            raise JobError(f"unknown outcome {outcome!r}", f"use one of {', '.join(OUTCOMES)}")
        with transaction(self.factory) as s:
            job = self._owned(s, job_id, worker)
            now = utcnow()
            if progress:
                job.progress = progress
            for level, message in logs or []:
                s.add(JobLog(job_id=job_id, level=level, message=message[:4000]))
            job.lease_owner = None
            job.lease_expires = None
            if outcome == "stopped":
                job.state = {"pausing": "paused", "cancelling": "cancelled"}.get(
                    job.state, "queued"
                )
            elif outcome == "retry" and job.attempts < job.max_attempts:
                job.state = "queued"
                job.not_before = now + timedelta(seconds=retry_after)
            elif outcome == "succeeded":
                job.state = "succeeded"
                job.result = result or {}
                hook = job_kind(job.kind).on_success
                if hook is not None:
                    hook(s, job, job.result)
                if job.host_id:
                    alerts.resolve(s, "job_failed", job.host_id)
            else:
                job.state = "failed"
                job.error = error or "failed"
                job.result = result or {}
                failed = job_kind(job.kind).on_failure
                if failed is not None:
                    failed(s, job, job.error)
                alerts.open_alert(
                    s,
                    "job_failed",
                    f"{job.kind} job {job.id} failed: {job.error}",
                    host_id=job.host_id,
                    job_id=job.id,
                    severity="error",
                )
            if error:
                s.add(JobLog(job_id=job_id, level="error", message=error[:4000]))
            s.add(JobLog(job_id=job_id, message=f"{outcome}: now {job.state}"))
            if job.state in FINAL:
                job.finished = now
            state = job.state
            done = job
        for fn in self.on_finish:
            fn(done)
        return state

    # -- operator actions -------------------------------------------------------
    def pause(self, s: Session, job: Job) -> None:
        if job.state == "queued":
            job.state = "paused"
        elif job.state == "running":
            job.state = "pausing"
        elif job.state not in ("paused", "pausing"):
            raise JobError(f"job {job.id} is {job.state}: it cannot be paused")

    def resume(self, s: Session, job: Job) -> None:
        if job.state in ("paused", "failed"):
            job.state = "queued"
            job.error = None
            job.finished = None
            if job.attempts >= job.max_attempts:
                job.max_attempts = job.attempts + 5
        elif job.state == "pausing":
            job.state = "running"  # the worker has not stopped yet: it just goes on
        elif job.state not in ("queued", "running"):
            raise JobError(f"job {job.id} is {job.state}: it cannot be resumed")

    def cancel(self, s: Session, job: Job) -> None:
        if job.state in ("queued", "paused"):
            job.state = "cancelled"
            job.finished = utcnow()
        elif job.state in ("running", "pausing"):
            job.state = "cancelling"
        elif job.state != "cancelling":
            raise JobError(f"job {job.id} is {job.state}: it cannot be cancelled")

    # -- recovery ---------------------------------------------------------------
    def reap(self) -> int:
        """Jobs whose worker stopped renewing the lease go back to the queue."""
        now = utcnow()
        n = 0
        with transaction(self.factory) as s:
            expired = s.scalars(
                select(Job).where(Job.state.in_(RUNNING), Job.lease_expires < now)
            ).all()
            for job in expired:
                n += self._requeue(s, job, f"lease of {job.lease_owner} expired")
        return n

    def prune(self, before: datetime, batch: int = 5000) -> int:
        """Delete up to `batch` finished jobs (and their logs) that ended before `before`,
        oldest first; a host's newest finished job of each kind stays (its status shows it),
        and so does a target's newest host-less one of each kind (its last gc).
        A thousand hosts on a 5-minute RPO finish ~288,000 syncs a day."""
        with transaction(self.factory) as s:
            j = aliased(Job)
            newest = (select(func.max(j.id)).where(j.state.in_(FINAL), j.host_id.is_not(None))
                      .group_by(j.host_id, j.kind))
            # and a target's newest of each host-less kind (gc: the scheduler's interval
            # and the console's "last gc" read it)
            newest_of_target = (select(func.max(j.id))
                                .where(j.state.in_(FINAL), j.host_id.is_(None),
                                       j.target_id.is_not(None))
                                .group_by(j.target_id, j.kind))
            ids = list(s.scalars(
                select(Job.id)
                .where(Job.state.in_(FINAL), Job.finished < before, Job.id.not_in(newest),
                       Job.id.not_in(newest_of_target))
                .order_by(Job.id).limit(batch)
            ))
            if ids:  # the database deletes the logs (ON DELETE CASCADE), unlinks alerts
                s.execute(delete(Job).where(Job.id.in_(ids)),
                          execution_options={"synchronize_session": False})
        return len(ids)

    def release_owned_by(self, prefix: str) -> int:
        """At start-up: leases of this server's previous (dead) embedded workers."""
        with transaction(self.factory) as s:
            jobs = s.scalars(
                select(Job).where(
                    and_(Job.state.in_(RUNNING), Job.lease_owner.startswith(prefix))
                )
            ).all()
            return sum(self._requeue(s, job, f"{job.lease_owner} died with the server")
                       for job in jobs)

    def _requeue(self, s: Session, job: Job, why: str) -> int:
        job.lease_owner = None
        job.lease_expires = None
        if job.state == "pausing":
            job.state = "paused"
        elif job.state == "cancelling":
            job.state = "cancelled"
            job.finished = utcnow()
        elif job.attempts >= job.max_attempts:
            job.state = "failed"
            job.error = f"{why}; gave up after {job.attempts} attempts"
            job.finished = utcnow()
            alerts.open_alert(s, "job_failed", f"{job.kind} job {job.id}: {job.error}",
                              host_id=job.host_id, job_id=job.id, severity="error")
        else:
            job.state = "queued"
        s.add(JobLog(job_id=job.id, level="warning", message=f"{why}: now {job.state}"))
        log.warning("job %s: %s: now %s", job.id, why, job.state)
        return 1
