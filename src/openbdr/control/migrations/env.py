"""Alembic environment: the caller hands over a connection (see `control.db.migrate`)."""

from __future__ import annotations

from alembic import context

from openbdr.control.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic` run by hand
    raise SystemExit("run migrations through `openbdr server --migrate-only`")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
