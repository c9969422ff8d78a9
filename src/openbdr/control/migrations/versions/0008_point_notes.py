"""A point's notes: how the source took its snapshot (e.g. the guest agent froze 2 file
systems, or why it could not), so that the console shows why a point is crash-consistent.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("points") as batch:
        batch.add_column(sa.Column("notes", sa.JSON, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("points") as batch:
        batch.drop_column("notes")
