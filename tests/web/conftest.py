"""Console fixtures: a real `openbdr server` and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..control.conftest import ServerProc
from ..helpers import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: screenshots of every page; `OPENBDR_UPDATE_SCREENSHOTS=1` refreshes the ones docs/console.md
#: shows, otherwise they go to a temporary directory so a test run leaves the tree clean
SHOTS = (
    Path(__file__).resolve().parents[2] / "docs" / "console"
    if os.environ.get("OPENBDR_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "openbdr-console-screenshots"
)
PASSWORDS = {"operator": "operator-pass-1", "viewer": "viewer-pass-1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A real server on SQLite; no scheduler, so the test decides when syncs start."""
    base = tmp_path_factory.mktemp("web")
    srv = ServerProc(base / "data", f"sqlite:///{base / 'catalog.db'}",
                     ["--tick", "0.5", "--lease-ttl", "4", "--workers", "2", "--no-scheduler"])
    with pytest.MonkeyPatch.context() as env:  # the platforms page's fake platform type
        env.setenv("OPENBDR_PLUGINS", "tests.control.fakeplatform")
        env.setenv("PYTHONPATH", f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
        srv.start()
    try:
        with srv.client() as c:
            for role, password in PASSWORDS.items():
                r = c.post("/users", json={"name": role, "role": role, "password": password})
                assert r.status_code == 201, r.text
            r = c.post("/targets", json={"name": "dr", "url": str(base / "repo"), "init": True})
            assert r.status_code == 201, r.text
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run scripts/setup (debian-packages.txt)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="openbdr-chromium-") as profile, \
            sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1366, "height": 900},
        )
        try:
            yield ctx
        finally:
            ctx.close()


class Console:
    """A browser tab on the console that records every console error and page error."""

    def __init__(self, ctx: Any, base: str) -> None:
        self.base = base
        self.page = ctx.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.set_default_timeout(30_000)

    def login(self, name: str, password: str) -> None:
        self.page.goto(self.base + "/")
        self.page.get_by_label("User name").fill(name)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_selector("#hosts-table")

    def login_token(self, token: str) -> None:
        self.page.goto(self.base + "/")
        self.page.get_by_text("Sign in with an API token").click()
        self.page.get_by_label("API token").fill(token)
        self.page.get_by_role("button", name="Use token").click()
        self.page.wait_for_selector("#hosts-table")

    def go(self, route: str, ready: str) -> None:
        self.page.evaluate("r => { location.hash = r; }", route)
        self.page.wait_for_selector(ready)

    def shot(self, name: str, full: bool = True) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.wait_for_timeout(300)  # let the last live update paint
        self.page.screenshot(path=str(path), full_page=full)
        return path

    def close(self) -> None:
        self.page.close()
        foreign = [u for u in self.requests
                   if not u.startswith((self.base, "blob:", "data:", "about:"))]
        assert not foreign, f"the console loaded outside assets: {foreign}"
        assert not self.errors, f"browser console errors: {self.errors}"


@pytest.fixture
def console_factory(browser_context: Any, server: ServerProc) -> Iterator[Any]:
    tabs: list[Console] = []

    def make() -> Console:
        tab = Console(browser_context, server.url)
        tabs.append(tab)
        return tab

    yield make
    for tab in tabs:
        tab.close()


def api(server: ServerProc, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token or server.token}"}
    return httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=60)
