"""The catalog's tables. Repositories stay the source of truth for restore points;
the `points` table mirrors them so the API can list and filter without reading S3."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime | None] = mapped_column(nullable=True)
    last_used: Mapped[datetime | None] = mapped_column(nullable=True)


class Target(Base):
    """A repository: directory or s3://…; `secrets` is encrypted (Fernet) JSON."""

    __tablename__ = "targets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    url: Mapped[str] = mapped_column(String(1024))
    secrets: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_refresh: Mapped[datetime | None] = mapped_column(nullable=True)


class Policy(Base):
    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: the RPO target: a restore point must never be older than this
    rpo_seconds: Mapped[int] = mapped_column(Integer, default=3600)
    full_resync_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    compression: Mapped[str] = mapped_column(String(16), default="none")
    compression_level: Mapped[int] = mapped_column(Integer, default=1)
    #: bytes/s when no window matches; 0 = unlimited
    bwlimit: Mapped[int] = mapped_column(BigInteger, default=0)
    #: [{"start": "08:00", "end": "18:00", "rate": 10485760}] in the server's UTC
    bandwidth_windows: Mapped[list[Any]] = mapped_column(default=list)
    retention: Mapped[dict[str, Any]] = mapped_column(default=dict)
    verify_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    drill_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    drill_plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: copy to a second site: {"target": name, "every_seconds", "keep_last", …} (copy job)
    copy_plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Platform(Base):
    """A hypervisor or cloud endpoint through which agentless hosts are discovered and read.

    `credentials` is sealed JSON (like target secrets): opened only to put it into the job
    spec a worker or sync proxy leases, never returned by the API."""

    __tablename__ = "platforms"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: a type of `capture.platform`: libvirt, openstack, aws, vmware, oci, fusioncompute
    type: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(1024))
    credentials: Mapped[str | None] = mapped_column(Text, nullable=True)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: sync proxies of this pool reach the platform; None = the server's embedded workers
    pool: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_test: Mapped[datetime | None] = mapped_column(nullable=True)
    last_test_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    last_test_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_discovery: Mapped[datetime | None] = mapped_column(nullable=True)
    #: the VMs of the last discovery (ids, names, disks, power state)
    vms: Mapped[list[Any]] = mapped_column(default=list)


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: {"type": "image", "paths": [...]}: the source registry knows each type
    source: Mapped[dict[str, Any]] = mapped_column()
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id"), index=True)
    policy_id: Mapped[int | None] = mapped_column(ForeignKey("policies.id"), nullable=True)
    #: agents of this pool run the host's jobs; None = the server's embedded workers
    pool: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    #: disks as last seen by a sync: [{"name", "size", "layout"}]
    disks: Mapped[list[Any]] = mapped_column(default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    #: bytes read from the sources and bytes of new chunks stored, over every point ever
    #: reported: Prometheus counters, which must not fall when retention forgets points
    read_bytes_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    stored_bytes_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: an agentless host: a VM of this platform (its source spec gets the platform's
    #: endpoint and credentials only in the job spec a worker leases)
    platform_id: Mapped[int | None] = mapped_column(
        ForeignKey("platforms.id"), nullable=True, index=True
    )
    vm: Mapped[str | None] = mapped_column(String(256), nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    #: a host's newest job of a kind (its status) is one index probe
    __table_args__ = (Index("ix_jobs_host_kind_id", "host_id", "kind", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    #: queued, running, pausing, paused, cancelling, cancelled, succeeded, failed
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    host_id: Mapped[int | None] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), nullable=True, index=True
    )
    target_id: Mapped[int | None] = mapped_column(ForeignKey("targets.id"), nullable=True)
    pool: Mapped[str | None] = mapped_column(String(128), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    lease_owner: Mapped[str | None] = mapped_column(String(256), nullable=True)
    lease_expires: Mapped[datetime | None] = mapped_column(nullable=True)
    #: not leased before this instant (a retry after a transient failure waits)
    not_before: Mapped[datetime | None] = mapped_column(nullable=True)
    created_by: Mapped[str] = mapped_column(String(128), default="scheduler")
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    first_started: Mapped[datetime | None] = mapped_column(nullable=True)
    started: Mapped[datetime | None] = mapped_column(nullable=True)
    finished: Mapped[datetime | None] = mapped_column(nullable=True)


class JobLog(Base):
    __tablename__ = "job_logs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)


class Point(Base):
    __tablename__ = "points"
    __table_args__ = (
        UniqueConstraint("host_id", "point_id"),
        Index("ix_points_host_created", "host_id", "created"),  # a host's newest point
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    point_id: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(index=True)
    consistency: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="ok")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    read_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    codec: Mapped[str] = mapped_column(String(16), default="none")
    mode: Mapped[str] = mapped_column(String(64), default="full")
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    disks: Mapped[list[Any]] = mapped_column(default=list)
    verified: Mapped[datetime | None] = mapped_column(nullable=True)
    drill: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: how the source took the snapshot (`RestorePoint.notes`): why it is this consistent
    notes: Mapped[list[Any]] = mapped_column(default=list)


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: rpo_breached, job_failed, point_damaged, drill_failed, … (`alerts.KINDS`)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    host_id: Mapped[int | None] = mapped_column(
        ForeignKey("hosts.id", ondelete="CASCADE"), nullable=True, index=True
    )
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    message: Mapped[str] = mapped_column(Text)
    opened: Mapped[datetime] = mapped_column(default=utcnow)
    resolved: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: what the alert is about when not a host (a target: `target:<name>`): one open alert
    #: per (kind, host, subject)
    subject: Mapped[str | None] = mapped_column(String(256), nullable=True)


class AuditEntry(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    pool: Mapped[str] = mapped_column(String(128), index=True)
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enrolled: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column(nullable=True)
    version: Mapped[str] = mapped_column(String(32), default="")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class EnrolmentToken(Base):
    __tablename__ = "enrolment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    pool: Mapped[str] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(128))
    created: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column()
    used: Mapped[datetime | None] = mapped_column(nullable=True)
    agent_id: Mapped[int | None] = mapped_column(
        ForeignKey("agents.id", ondelete="SET NULL"), nullable=True
    )


class ServiceLock(Base):
    """Named leases between server processes (one scheduler leader at a time)."""

    __tablename__ = "service_locks"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    expires: Mapped[datetime] = mapped_column()


class NotifyChannel(Base):
    """Where alerts and protection reports go: a webhook, an SMTP mailbox or a chat hook.

    `config` holds what may be shown (URL, SMTP host, addresses); `secrets` is sealed JSON
    (webhook secret, SMTP password), never returned by the API."""

    __tablename__ = "notify_channels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: webhook, email, chat
    type: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: alert kinds this channel receives ([] = every kind)
    kinds: Mapped[list[Any]] = mapped_column(default=list)
    min_severity: Mapped[str] = mapped_column(String(16), default="warning")
    #: also tell when an alert is resolved
    resolved: Mapped[bool] = mapped_column(Boolean, default=True)
    #: the protection report: None, "daily" or "weekly"
    report: Mapped[str | None] = mapped_column(String(16), nullable=True)
    report_last: Mapped[datetime | None] = mapped_column(nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class NotifyDelivery(Base):
    """One message to one channel, kept until delivered or expired: the delivery worker's
    queue survives a server restart. `payload` is frozen when the event happens."""

    __tablename__ = "notify_deliveries"
    __table_args__ = (Index("ix_notify_deliveries_due", "state", "next_attempt"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel_id: Mapped[int] = mapped_column(
        ForeignKey("notify_channels.id", ondelete="CASCADE"), index=True
    )
    alert_id: Mapped[int | None] = mapped_column(
        ForeignKey("alerts.id", ondelete="SET NULL"), nullable=True
    )
    #: alert.opened, alert.resolved, report, test
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: pending, delivered, failed (the test button's one try), expired
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    delivered: Mapped[datetime | None] = mapped_column(nullable=True)
