"""Per-host byte counters that never fall.

`/metrics` summed the bytes read and stored over the restore points in the catalog; when
retention forgot a point the sums fell, and Prometheus takes a counter that falls for a
restart: `rate()` and `increase()` then counted the whole history again. Each host now
keeps running totals, added to once per point reported; they start at the sums of the
points in the catalog.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(
            sa.Column("read_bytes_total", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("stored_bytes_total", sa.BigInteger, nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE hosts SET"
        " read_bytes_total = (SELECT COALESCE(SUM(p.read_bytes), 0) FROM points p"
        " WHERE p.host_id = hosts.id),"
        " stored_bytes_total = (SELECT COALESCE(SUM(p.stored_bytes), 0) FROM points p"
        " WHERE p.host_id = hosts.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("stored_bytes_total")
        batch.drop_column("read_bytes_total")
