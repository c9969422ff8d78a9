"""`openbdr server`: uvicorn serving the app, TLS when given a certificate."""

from __future__ import annotations

import logging

import uvicorn

from . import jsonlog
from .app import ServerConfig, create_app

log = logging.getLogger(__name__)


def serve(
    config: ServerConfig,
    host: str = "127.0.0.1",
    port: int = 8470,
    certfile: str | None = None,
    keyfile: str | None = None,
    log_level: int = logging.INFO,
) -> None:
    jsonlog.setup(log_level)
    app = create_app(config)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
