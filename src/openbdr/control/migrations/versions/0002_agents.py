"""Remote agents: enrolment tokens, agent credentials, and a worker pool per host and job.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("pool", sa.String(128), nullable=False),
        sa.Column("credential_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("enrolled", TS, nullable=False),
        sa.Column("last_seen", TS),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
    )
    op.create_index("ix_agents_pool", "agents", ["pool"])
    op.create_table(
        "enrolment_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("pool", sa.String(128), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("expires", TS, nullable=False),
        sa.Column("used", TS),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id", ondelete="SET NULL")),
    )
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("pool", sa.String(128)))
        batch.create_index("ix_hosts_pool", ["pool"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pool", sa.String(128)))
        batch.add_column(sa.Column("not_before", TS))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("not_before")
        batch.drop_column("pool")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_index("ix_hosts_pool")
        batch.drop_column("pool")
    op.drop_table("enrolment_tokens")
    op.drop_table("agents")
