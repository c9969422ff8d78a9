"""Indexes for each host's newest job of a kind and newest restore point.

The status of a host reads its newest finished sync and drill and its newest point; with
only single-column indexes the database scanned every job of a kind (10,000 for a
thousand hosts after a few hours) for each page of hosts.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_host_kind_id", "jobs", ["host_id", "kind", "id"])
    op.create_index("ix_points_host_created", "points", ["host_id", "created"])


def downgrade() -> None:
    op.drop_index("ix_points_host_created", "points")
    op.drop_index("ix_jobs_host_kind_id", "jobs")
