"""The scheduler: keeps every host's newest restore point younger than its RPO target.

Each tick (one leader among server processes, through a `service_locks` lease) it
re-queues jobs of dead workers, starts a sync early enough that it commits before the
point ages past the target (lead time from the last sync's duration), opens and
resolves RPO alerts, starts verification, retention and drills on their own schedules
when those job kinds are installed, and refreshes the points mirror now and then (in a
thread of its own).
The work per tick is a handful of grouped queries, whatever the number of hosts.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from . import alerts
from .crypto import SecretBox
from .db import transaction
from .jobs import ACTIVE, JobError, JobQueue
from .mirror import refresh_target
from .models import Alert, Host, Job, Point, Policy, ServiceLock, Target, utcnow
from .registry import KINDS, load_plugins
from .worker import open_target

log = logging.getLogger(__name__)


def sync_lead(rpo: float, last_duration: float, tick: float) -> float:
    """How long before the RPO target a sync must start to commit in time."""
    return min(rpo * 0.5, 2.0 * last_duration + max(2.0 * tick, 0.1 * rpo))


#: seconds between two prunes of finished jobs, batches per prune, jobs per batch
PRUNE_EVERY, PRUNE_BATCHES, PRUNE_BATCH = 600.0, 10, 5000
#: finished jobs are deleted this many days after they ended, by default
KEEP_JOBS_DAYS = 7.0


class Scheduler(threading.Thread):
    def __init__(
        self,
        factory: sessionmaker[Session],
        queue: JobQueue,
        box: SecretBox,
        owner: str,
        tick: float = 5.0,
        refresh_every: float = 300.0,
        keep_jobs: float = KEEP_JOBS_DAYS * 86400.0,
    ) -> None:
        super().__init__(name="scheduler", daemon=True)
        #: finished jobs are deleted this many seconds after they ended (0: kept for ever)
        self.keep_jobs = keep_jobs
        #: monotonic time of the last prune (None: none yet; the clock starts at boot, so
        #: 0 would hold off the first prune for ten minutes after a reboot)
        self._last_prune: float | None = None
        self.factory = factory
        self.queue = queue
        self.box = box
        self.owner = owner
        self.tick_seconds = tick
        self.refresh_every = refresh_every
        self.stopping = threading.Event()
        self._last_refresh: dict[int, float] = {}
        self._refresher: threading.Thread | None = None
        self.ticks = 0

    def run(self) -> None:
        load_plugins()
        while not self.stopping.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception as exc:  # the catalog may be restarting: try next tick
                log.warning("scheduler tick failed: %s", exc)

    def stop(self) -> None:
        self.stopping.set()

    # -- leadership ---------------------------------------------------------------
    def is_leader(self) -> bool:
        now = utcnow()
        expires = now + timedelta(seconds=max(30.0, self.tick_seconds * 6))
        with transaction(self.factory) as s:
            got = s.execute(
                update(ServiceLock)
                .where(
                    ServiceLock.name == "scheduler",
                    (ServiceLock.owner == self.owner) | (ServiceLock.expires < now),
                )
                .values(owner=self.owner, expires=expires)
            ).rowcount  # type: ignore[attr-defined]
            if got == 1:
                return True
        try:
            with transaction(self.factory) as s:
                if s.get(ServiceLock, "scheduler") is not None:
                    return False
                s.add(ServiceLock(name="scheduler", owner=self.owner, expires=expires))
            return True
        except IntegrityError:
            return False

    # -- one pass -----------------------------------------------------------------
    def tick(self, now: datetime | None = None) -> dict[str, int]:
        if not self.is_leader():
            return {}
        self.ticks += 1
        self.queue.reap()
        now = now or utcnow()
        stats = {"synced": 0, "breached": 0, "periodic": 0}
        with transaction(self.factory) as s:
            stats.update(self._protect(s, now))
            stats["periodic"] = self._periodic(s, now)
        self._start_refresh(now)
        stats["pruned"] = self._prune(now)
        return stats

    def _prune(self, now: datetime) -> int:
        """Every ten minutes, finished jobs past `keep_jobs`: a few batches per pass, so a
        long backlog (an upgrade, a changed setting) drains without holding up the ticks."""
        mono = time.monotonic()
        if not self.keep_jobs or (
            self._last_prune is not None and mono - self._last_prune < PRUNE_EVERY
        ):
            return 0
        self._last_prune = mono
        before = now - timedelta(seconds=self.keep_jobs)
        n = 0
        for _ in range(PRUNE_BATCHES):
            got = self.queue.prune(before, PRUNE_BATCH)
            n += got
            if got < PRUNE_BATCH:
                break
        if n:
            log.info("deleted %d finished job(s) that ended before %s", n, before.isoformat())
        return n

    def _start_refresh(self, now: datetime) -> None:
        """Re-list the targets in a thread of its own: reading thousands of manifests
        must not hold up the next ticks (syncs would start late)."""
        if self._refresher is not None and self._refresher.is_alive():
            return
        self._refresher = threading.Thread(target=self._refresh_logged, args=(now,),
                                           name="scheduler-refresh", daemon=True)
        self._refresher.start()

    def _refresh_logged(self, now: datetime) -> None:
        try:
            self._refresh(now)
        except Exception as exc:  # the catalog may be restarting: next time
            log.warning("refreshing the points mirror failed: %s", exc)

    def _protect(self, s: Session, now: datetime) -> dict[str, int]:
        latest = dict(
            s.execute(select(Point.host_id, func.max(Point.created)).group_by(Point.host_id)).all()
        )
        durations = self._last_durations(s)
        busy = set(
            s.scalars(select(Job.host_id).where(Job.kind == "sync", Job.state.in_(ACTIVE))).all()
        )
        open_rpo = set(
            s.scalars(
                select(Alert.host_id).where(Alert.kind == "rpo_breached", Alert.resolved.is_(None))
            ).all()
        )
        synced = breached = 0
        # columns, not ORM objects: a thousand hosts every tick; a host due for a sync
        # is loaded whole below
        rows = s.execute(
            select(Host.id, Host.name, Policy.rpo_seconds, Policy.full_resync_seconds)
            .join(Policy, Policy.id == Host.policy_id)
            .where(Host.enabled.is_(True), Policy.enabled.is_(True))
        ).all()
        for host_id, name, rpo_seconds, full_every in rows:
            rpo = float(rpo_seconds)
            last = latest.get(host_id)
            age = (now - last).total_seconds() if last else None
            if age is not None and age > rpo:
                breached += 1
                if host_id not in open_rpo:
                    alerts.open_alert(
                        s, "rpo_breached",
                        f"host {name}: newest restore point is {age:.0f} s old, "
                        f"RPO target {rpo:.0f} s",
                        host_id=host_id, severity="error",
                    )
            elif age is not None and host_id in open_rpo:
                alerts.resolve(s, "rpo_breached", host_id)
            if host_id in busy:
                continue
            lead = sync_lead(rpo, durations.get(host_id, 0.0), self.tick_seconds)
            if age is None or age >= rpo - lead:
                params: dict[str, Any] = {}
                if full_every and self._full_due(s, host_id, float(full_every), now):
                    params["full"] = True
                try:
                    host = s.get_one(Host, host_id)
                    self.queue.enqueue(s, "sync", host=host, params=params, priority=10)
                    synced += 1
                except JobError:
                    pass
        return {"synced": synced, "breached": breached}

    def _last_durations(self, s: Session) -> dict[int, float]:
        newest = (
            select(Point.host_id.label("h"), func.max(Point.created).label("c"))
            .group_by(Point.host_id)
            .subquery()
        )
        q = select(Point.host_id, Point.duration_s).join(
            newest, (Point.host_id == newest.c.h) & (Point.created == newest.c.c)
        )
        return {h: float(d) for h, d in s.execute(q).all()}

    def _full_due(self, s: Session, host_id: int, seconds: float, now: datetime) -> bool:
        last_full = s.scalar(
            select(func.max(Point.created)).where(
                Point.host_id == host_id, Point.mode.contains("full")
            )
        )
        return last_full is None or (now - last_full).total_seconds() >= seconds

    def _periodic(self, s: Session, now: datetime) -> int:
        """verify / retention / drill at their policy intervals, when the kind exists."""
        schedules: list[tuple[str, Any]] = [
            ("verify", lambda p: p.verify_seconds),
            ("retention", lambda p: (p.retention or {}).get("every_seconds", 86400)
             if p.retention else None),
            ("drill", lambda p: p.drill_seconds),
        ]
        started = 0
        schedules = [(kind, every) for kind, every in schedules if kind in KINDS]
        policies = s.scalars(select(Policy).where(Policy.enabled.is_(True))).all()
        if not any(every(p) for _, every in schedules for p in policies):
            return 0  # nothing periodic configured: no need to read every host
        rows = s.execute(
            select(Host, Policy)
            .join(Policy, Policy.id == Host.policy_id)
            .where(Host.enabled.is_(True), Policy.enabled.is_(True))
        ).all()
        for kind, every in schedules:
            if not any(every(p) for _, p in rows):
                continue
            last = dict(
                s.execute(
                    select(Job.host_id, func.max(Job.created))
                    .where(Job.kind == kind)
                    .group_by(Job.host_id)
                ).all()
            )
            has_point = set(s.scalars(select(Point.host_id).distinct()).all())
            for host, policy in rows:
                seconds = every(policy)
                if not seconds or host.id not in has_point:
                    continue
                prev = last.get(host.id)
                if prev is None or (now - prev).total_seconds() >= float(seconds):
                    try:
                        self.queue.enqueue(s, kind, host=host, params={})
                        started += 1
                    except JobError:
                        pass
        return started

    def _refresh(self, now: datetime) -> None:
        mono = now.timestamp()
        with transaction(self.factory) as s:
            targets = [(t.id, t.url, self.box.open(t.secrets)) for t in s.scalars(select(Target))]
        for tid, url, secrets in targets:
            if mono - self._last_refresh.get(tid, 0.0) < self.refresh_every:
                continue
            self._last_refresh[tid] = mono
            listed = utcnow()
            try:
                repo = open_target(url, secrets)
                try:
                    points = repo.points()
                finally:
                    repo.close()
            except Exception as exc:
                log.warning("cannot refresh target %s: %s", url, exc)
                continue
            with transaction(self.factory) as s:
                target = s.get(Target, tid)
                if target is not None:
                    refresh_target(s, target, points, listed)
