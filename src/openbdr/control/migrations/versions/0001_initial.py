"""The first catalog: users, tokens, targets, policies, hosts, jobs, points, alerts, audit.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(256)),
        sa.Column("created", TS, nullable=False),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created", TS, nullable=False),
        sa.Column("expires", TS),
        sa.Column("last_used", TS),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    op.create_table(
        "targets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("url", sa.String(1024), nullable=False),
        sa.Column("secrets", sa.Text),
        sa.Column("created", TS, nullable=False),
        sa.Column("last_refresh", TS),
    )
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("rpo_seconds", sa.Integer, nullable=False),
        sa.Column("full_resync_seconds", sa.Integer),
        sa.Column("compression", sa.String(16), nullable=False),
        sa.Column("compression_level", sa.Integer, nullable=False),
        sa.Column("bwlimit", sa.BigInteger, nullable=False),
        sa.Column("bandwidth_windows", sa.JSON, nullable=False),
        sa.Column("retention", sa.JSON, nullable=False),
        sa.Column("verify_seconds", sa.Integer),
        sa.Column("drill_seconds", sa.Integer),
        sa.Column("drill_plan", sa.JSON, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created", TS, nullable=False),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("source", sa.JSON, nullable=False),
        sa.Column("target_id", sa.Integer, sa.ForeignKey("targets.id"), nullable=False),
        sa.Column("policy_id", sa.Integer, sa.ForeignKey("policies.id")),
        sa.Column("disks", sa.JSON, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created", TS, nullable=False),
    )
    op.create_index("ix_hosts_target_id", "hosts", ["target_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("host_id", sa.Integer, sa.ForeignKey("hosts.id", ondelete="CASCADE")),
        sa.Column("target_id", sa.Integer, sa.ForeignKey("targets.id")),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(256)),
        sa.Column("lease_expires", TS),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("first_started", TS),
        sa.Column("started", TS),
        sa.Column("finished", TS),
    )
    for col in ("kind", "state", "host_id", "created"):
        op.create_index(f"ix_jobs_{col}", "jobs", [col])
    op.create_table(
        "job_logs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("ts", TS, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_job_logs_job_id", "job_logs", ["job_id"])
    op.create_table(
        "points",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "host_id", sa.Integer, sa.ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("point_id", sa.String(64), nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("consistency", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("read_bytes", sa.BigInteger, nullable=False),
        sa.Column("stored_bytes", sa.BigInteger, nullable=False),
        sa.Column("codec", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(64), nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("disks", sa.JSON, nullable=False),
        sa.Column("verified", TS),
        sa.Column("drill", sa.JSON, nullable=False),
        sa.UniqueConstraint("host_id", "point_id"),
    )
    op.create_index("ix_points_host_id", "points", ["host_id"])
    op.create_index("ix_points_created", "points", ["created"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("host_id", sa.Integer, sa.ForeignKey("hosts.id", ondelete="CASCADE")),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id", ondelete="SET NULL")),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("opened", TS, nullable=False),
        sa.Column("resolved", TS),
        sa.Column("acknowledged_by", sa.String(128)),
    )
    for col in ("kind", "host_id", "resolved"):
        op.create_index(f"ix_alerts_{col}", "alerts", [col])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ts", TS, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("object_type", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(128), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_ts", "audit", ["ts"])
    op.create_table(
        "service_locks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("expires", TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "service_locks", "audit", "alerts", "points", "job_logs", "jobs", "hosts",
        "policies", "targets", "api_tokens", "users",
    ):
        op.drop_table(table)
