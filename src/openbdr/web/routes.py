"""Serving the console: `/` is the single-page app, `/console/…` its static files.

The page's Content-Security-Policy allows only this server: the console loads nothing
from elsewhere, so it works offline and behind an air gap.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from . import api, dashboard, events

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-src 'self' blob:; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


class ConsoleFiles(StaticFiles):
    """Static files that browsers revalidate (no stale module after an upgrade)."""

    async def get_response(self, path: str, scope: Scope):  # type: ignore[no-untyped-def]
        response = await super().get_response(path, scope)
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        return response


def install(app: FastAPI) -> None:
    """Mount the console and its endpoints on the control plane's app."""
    app.include_router(dashboard.router)
    app.include_router(api.router)
    app.include_router(events.router)
    app.mount("/console", ConsoleFiles(directory=STATIC), name="console")

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(), headers=HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> RedirectResponse:
        return RedirectResponse("/console/favicon.svg")
