"""Platforms (agentless sources): endpoints with sealed credentials and a proxy pool; a
host may be a VM of a platform.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "platforms",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(1024), nullable=False),
        sa.Column("credentials", sa.Text),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("pool", sa.String(128)),
        sa.Column("created", TS, nullable=False),
        sa.Column("last_test", TS),
        sa.Column("last_test_ok", sa.Boolean),
        sa.Column("last_test_message", sa.Text),
        sa.Column("last_discovery", TS),
        sa.Column("vms", sa.JSON, nullable=False),
    )
    if op.get_bind().dialect.name == "sqlite":
        # not a batch: its table copy drops `hosts`, and the drop cascades to jobs and points
        op.execute("ALTER TABLE hosts ADD COLUMN platform_id INTEGER REFERENCES platforms (id)")
    else:
        op.add_column("hosts", sa.Column("platform_id", sa.Integer, sa.ForeignKey("platforms.id")))
    op.add_column("hosts", sa.Column("vm", sa.String(256)))
    op.create_index("ix_hosts_platform_id", "hosts", ["platform_id"])


def downgrade() -> None:
    op.drop_index("ix_hosts_platform_id", "hosts")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("vm")
        batch.drop_column("platform_id")
    op.drop_table("platforms")
