"""Prometheus `/metrics`: read from the catalog at scrape time (any server answers the
same), plus the durations of the jobs this server's workers finished: with several
processes (`--processes`) they share them through files (`PROMETHEUS_MULTIPROC_DIR`), so
whichever process answers a scrape reports them all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .jobs import ACTIVE
from .models import Host, Job, Point, Policy, utcnow

#: set for the processes of one server: where they share their metrics
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class CatalogCollector(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Any]:
        now = utcnow()
        age = GaugeMetricFamily("openbdr_restore_point_age_seconds",
                                "Age of each host's newest restore point", labels=["host"])
        rpo = GaugeMetricFamily("openbdr_rpo_target_seconds", "Each host's RPO target",
                                labels=["host"])
        # running totals per host: they do not fall when retention forgets points
        read = CounterMetricFamily("openbdr_bytes_read", "Bytes read from sources by syncs",
                                   labels=["host"])
        stored = CounterMetricFamily("openbdr_bytes_stored",
                                     "Bytes of new chunks stored (after compression)",
                                     labels=["host"])
        depth = GaugeMetricFamily("openbdr_job_queue_depth", "Jobs by kind and state",
                                  labels=["kind", "state"])
        # a gauge: finished jobs are pruned after --keep-jobs-days, so the number falls
        failures = GaugeMetricFamily("openbdr_job_failures",
                                     "Failed jobs in the catalog (pruned after "
                                     "--keep-jobs-days)", labels=["kind"])
        with self.factory() as s:
            rows = s.execute(
                select(Host.name, func.max(Point.created), Host.read_bytes_total,
                       Host.stored_bytes_total, Policy.rpo_seconds)
                .join(Point, Point.host_id == Host.id, isouter=True)
                .join(Policy, Policy.id == Host.policy_id, isouter=True)
                .group_by(Host.name, Host.read_bytes_total, Host.stored_bytes_total,
                          Policy.rpo_seconds)
            ).all()
            for name, newest, r, st, target in rows:
                if newest is not None:
                    age.add_metric([name], (now - newest).total_seconds())
                if target is not None:
                    rpo.add_metric([name], float(target))
                read.add_metric([name], float(r or 0))
                stored.add_metric([name], float(st or 0))
            for kind, state, n in s.execute(
                select(Job.kind, Job.state, func.count()).where(Job.state.in_(ACTIVE))
                .group_by(Job.kind, Job.state)
            ):
                depth.add_metric([kind, state], n)
            for kind, n in s.execute(
                select(Job.kind, func.count()).where(Job.state == "failed").group_by(Job.kind)
            ):
                failures.add_metric([kind], n)
        yield from (age, rpo, read, stored, depth, failures)


class Metrics:
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(CatalogCollector(factory))
        shared = bool(os.environ.get(MULTIPROC_ENV))
        if shared:  # the histogram goes to the files, and the scrape reads every process's
            MultiProcessCollector(self.registry)
        self.job_seconds = Histogram(
            "openbdr_job_duration_seconds", "Duration of jobs this server finished",
            ["kind", "state"], registry=None if shared else self.registry,
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
        )

    def job_finished(self, job: Job) -> None:
        if job.started is not None and job.finished is not None:
            self.job_seconds.labels(job.kind, job.state).observe(
                (job.finished - job.started).total_seconds()
            )
