"""Catalog engine, sessions and migrations: SQLite in the data directory by default,
PostgreSQL for production (`--database postgresql://…`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import OpenBDRError

MIGRATIONS = Path(__file__).with_name("migrations")


class CatalogError(OpenBDRError):
    """The catalog database cannot be reached or is of an unknown revision."""


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the only driver we ship)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # take the write lock up front: a read that later writes cannot deadlock
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def _config(connection: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the catalog to `revision` (an older catalog is upgraded in place)."""
    try:
        with engine.begin() as conn:
            command.upgrade(_config(conn), revision)
    except OperationalError as exc:
        raise CatalogError(
            f"cannot open the catalog database {engine.url.render_as_string()}: {exc.orig}",
            "check --database and that the server is running",
        ) from None


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: committed on success, rolled back on any error."""
    with factory() as session, session.begin():
        yield session
