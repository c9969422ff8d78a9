"""Notifications: channels (webhook, email, chat) with sealed secrets and routing, the
deliveries queue, and an alert's subject (an alert about a target rather than a host).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("alerts", sa.Column("subject", sa.String(256)))
    op.create_table(
        "notify_channels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("secrets", sa.Text),
        sa.Column("kinds", sa.JSON, nullable=False),
        sa.Column("min_severity", sa.String(16), nullable=False),
        sa.Column("resolved", sa.Boolean, nullable=False),
        sa.Column("report", sa.String(16)),
        sa.Column("report_last", TS),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created", TS, nullable=False),
    )
    op.create_table(
        "notify_deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("channel_id", sa.Integer,
                  sa.ForeignKey("notify_channels.id", ondelete="CASCADE"), nullable=False),
        sa.Column("alert_id", sa.Integer, sa.ForeignKey("alerts.id", ondelete="SET NULL")),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", TS, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created", TS, nullable=False),
        sa.Column("delivered", TS),
    )
    op.create_index("ix_notify_deliveries_channel_id", "notify_deliveries", ["channel_id"])
    op.create_index("ix_notify_deliveries_created", "notify_deliveries", ["created"])
    op.create_index("ix_notify_deliveries_due", "notify_deliveries", ["state", "next_attempt"])


def downgrade() -> None:
    op.drop_table("notify_deliveries")
    op.drop_table("notify_channels")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("subject")
