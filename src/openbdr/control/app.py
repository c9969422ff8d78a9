"""The server application: catalog, API, embedded workers and scheduler in one process.

`create_app(config)` opens (and migrates) the catalog, bootstraps the first admin on an
empty catalog (its token written to `<data>/admin.token`, mode 0600), re-queues jobs of
this server's previous life, and starts N embedded workers and the scheduler.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from .. import __version__
from . import apierrors, routes_admin, routes_catalog, routes_jobs, routes_platforms
from .auth import DB, require
from .crypto import SecretBox, digest, new_token
from .db import make_engine, migrate, session_factory, transaction
from .jobs import JobQueue
from .metrics import Metrics
from .models import ApiToken, User
from .registry import load_plugins
from .scheduler import KEEP_JOBS_DAYS, Scheduler
from .services import Services
from .worker import LocalBroker, Worker

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    data_dir: Path
    database: str | None = None
    workers: int = 2
    scheduler: bool = True
    tick: float = 5.0
    lease_ttl: float = 30.0
    refresh_every: float = 300.0
    #: finished jobs are deleted this many days after they ended (0: kept for ever)
    keep_jobs_days: float = KEEP_JOBS_DAYS
    poll: float = 1.0
    #: local repositories may only be created or opened below these directories (none: any)
    repository_roots: tuple[Path, ...] = ()

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'catalog.db'}"


def server_id(data_dir: Path) -> str:
    """Stable per data directory and machine: leases of a previous life can be reclaimed."""
    path = data_dir / "server.id"
    if not path.exists():
        path.write_text(f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}\n")
    return path.read_text().strip()


def bootstrap_admin(svc: Services) -> str | None:
    """On an empty catalog: user `admin` with a token in `<data>/admin.token`."""
    with transaction(svc.factory) as s:
        if s.scalar(select(func.count()).select_from(User)):
            return None
        user = User(name="admin", role="admin")
        s.add(user)
        s.flush()
        token = new_token("obdt")
        s.add(ApiToken(user_id=user.id, name="bootstrap", token_hash=digest(token)))
    path = svc.data_dir / "admin.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("created user admin; its API token is in %s", path)
    return token


def open_services(config: ServerConfig) -> Services:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.data_dir, 0o700)
    engine = make_engine(config.database_url)
    migrate(engine)
    factory = session_factory(engine)
    box = SecretBox.from_file(config.data_dir / "server.key")
    queue = JobQueue(factory, box, lease_ttl=config.lease_ttl)
    svc = Services(engine, factory, box, queue, config.data_dir, server_id(config.data_dir))
    bootstrap_admin(svc)
    return svc


#: catalog connections a server process opens at start
WARM_CONNECTIONS = 8


def _ready_for_requests(svc: Services) -> None:
    """Open catalog connections now: a burst of clients at start-up otherwise waited for
    each of its threads to open one. (Fewer request threads than the pool's connections
    deadlocked: a request holds its connection from authentication on while it waits
    for a thread.)"""
    if svc.engine.dialect.name == "sqlite":
        return  # a file to open, and every transaction would take its write lock
    conns = []
    try:
        for _ in range(WARM_CONNECTIONS):
            conns.append(svc.engine.connect())  # held, so that the pool opens a new one
    finally:
        for c in conns:
            c.close()


def create_app(config: ServerConfig, svc: Services | None = None,
               process: int | None = None) -> FastAPI:
    """`process`: one of several server processes (its pid): its workers and scheduler
    get an identity of their own (`<server id>.<pid>`)."""
    svc = svc or open_services(config)
    if process is not None:
        svc.server_id = f"{svc.server_id}.{process}"
    load_plugins()
    metrics = Metrics(svc.factory)
    svc.queue.on_finish.append(metrics.job_finished)
    svc.extra["metrics"] = metrics
    svc.extra["repository_roots"] = tuple(Path(r).resolve() for r in config.repository_roots)
    threads: list[Any] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        prefix = f"server:{svc.server_id}:"
        n = svc.queue.release_owned_by(prefix)
        if n:
            log.warning("re-queued %d job(s) of this server's previous run", n)
        for i in range(config.workers):
            threads.append(Worker(LocalBroker(svc.queue), f"{prefix}{i}", poll=config.poll))
        if config.scheduler:
            threads.append(Scheduler(svc.factory, svc.queue, svc.box, svc.server_id,
                                     tick=config.tick, refresh_every=config.refresh_every,
                                     keep_jobs=config.keep_jobs_days * 86400))
        for t in threads:
            t.start()
        _ready_for_requests(svc)
        log.info("server %s ready: %d worker(s), catalog %s", svc.server_id, config.workers,
                 svc.engine.url.render_as_string())
        try:
            yield
        finally:
            for t in threads:
                t.stop()
            for t in threads:
                t.join(timeout=30)
            svc.engine.dispose()

    app = FastAPI(
        title="OpenBDR control plane",
        version=__version__,
        description="Hosts, policies, jobs, restore points, alerts and agents. "
        "Every error is an `ErrorBody`. Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    app.state.services = svc
    apierrors.install(app)
    app.include_router(routes_admin.router)
    app.include_router(routes_catalog.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_platforms.router)
    from ..web import install as install_console

    install_console(app)  # the web console: `/`, `/console/…`, `/api/v1/console/…`

    @app.get("/metrics", tags=["meta"], responses=apierrors.RESPONSES,
             response_class=Response,
             dependencies=[Depends(require("viewer"))])
    def prometheus(s: DB) -> Response:
        """Prometheus exposition (a viewer token: `authorization: bearer` in the scrape)."""
        s.commit()  # end the request's transaction: the collector reads in its own
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
