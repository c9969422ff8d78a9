"""`openbdr server`: uvicorn serving the app, TLS when given a certificate.

With `processes > 1` uvicorn runs that many server processes on one listening socket
(the kernel spreads connections over them): Python runs one thread at a time per
process, so this is how one server uses several cores for its API and its embedded
workers. Each process has its own workers and scheduler thread (one leads, through the
catalog's `service_locks`), and its own identity (`<server id>.<pid>`), so the leases
of one are never mistaken for a dead sibling's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from . import jsonlog
from .app import ServerConfig, create_app, open_services
from .metrics import MULTIPROC_ENV

log = logging.getLogger(__name__)
#: how the parent hands its configuration to the processes uvicorn starts
CONFIG_ENV = "OPENBDR_SERVER_PROCESS_CONFIG"


def serve(
    config: ServerConfig,
    host: str = "127.0.0.1",
    port: int = 8470,
    certfile: str | None = None,
    keyfile: str | None = None,
    log_level: int = logging.INFO,
    processes: int = 1,
) -> None:
    jsonlog.setup(log_level)
    opts: dict[str, Any] = {
        "host": host, "port": port, "ssl_certfile": certfile, "ssl_keyfile": keyfile,
        "log_config": None, "access_log": False, "timeout_graceful_shutdown": 30,
    }
    if processes <= 1:
        uvicorn.run(create_app(config), **opts)
        return
    # once, before the processes start: migrate, bootstrap, and re-queue the jobs that
    # any process of this server's previous life held
    svc = open_services(config)
    n = svc.queue.release_owned_by(f"server:{svc.server_id}")
    if n:
        log.warning("re-queued %d job(s) of this server's previous run", n)
    svc.engine.dispose()
    raw = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    raw["repository_roots"] = [str(r) for r in config.repository_roots]
    os.environ[CONFIG_ENV] = json.dumps({"config": raw, "log_level": log_level})
    # the processes (spawned: they import prometheus_client afresh) share job metrics here
    shared = config.data_dir / "metrics"
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir(mode=0o700)
    os.environ[MULTIPROC_ENV] = str(shared)
    uvicorn.run("openbdr.control.server:process_app", factory=True, workers=processes, **opts)


def process_app() -> FastAPI:
    """The app of one of several server processes (uvicorn calls this in each)."""
    given = json.loads(os.environ[CONFIG_ENV])
    jsonlog.setup(int(given["log_level"]))
    raw = given["config"]
    raw["data_dir"] = Path(raw["data_dir"])
    raw["repository_roots"] = tuple(Path(r) for r in raw["repository_roots"])
    return create_app(ServerConfig(**raw), process=os.getpid())
