"""Control-plane fixtures: a real PostgreSQL server, catalogs on both backends, and a
real `openbdr server` process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import OPENBDR

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL 15 on 127.0.0.1; yields an admin URL without a database."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 is not installed (scripts/debian-packages.txt: postgresql)")
    base = Path(tempfile.mkdtemp(prefix="openbdr-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        os.chmod(base, 0o700)
    port = free_port()
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "openbdr",
                                 "--auth=trust", "-E", "UTF8", "--no-sync"]),
                   check=True, capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=300"
    proc = subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "120",
                                        "-l", str(base / "log"), "-o", opts, "start"]),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {proc.stderr}\n{log[-2000:]}")
    try:
        yield f"postgresql://openbdr@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                     "stop"]), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_pg_database(admin_url: str) -> str:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin_url}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The suite runs on both catalogs: SQLite in a data dir and a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return new_pg_database(request.getfixturevalue("postgres"))


class ServerProc:
    """A real `openbdr server` process that a test can SIGKILL and start again."""

    def __init__(self, data: Path, database: str, extra: list[str]) -> None:
        self.data = data
        self.database = database
        self.extra = extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.verify: bool | str = True
        self.log = data.parent / f"server-{self.port}.log"

    def start(self) -> None:
        logf = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [*OPENBDR, "server", "--data", str(self.data), "--database", self.database,
             "--listen", f"127.0.0.1:{self.port}", *self.extra],
            stdout=logf, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                verify = (ssl.create_default_context(cafile=self.verify)
                          if isinstance(self.verify, str) else self.verify)
                health = httpx.get(self.url + "/api/v1/health", timeout=2, verify=verify)
                if health.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not answer:\n{self.log.read_text()[-3000:]}")

    @property
    def token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1",
                            headers={"Authorization": f"Bearer {self.token}"}, timeout=60)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def server(catalog_url: str, tmp_path: Path) -> Iterator[ServerProc]:
    srv = ServerProc(tmp_path / "data", catalog_url,
                     ["--tick", "0.5", "--lease-ttl", "4", "--workers", "2"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def wait_for(fn: Any, timeout: float = 180, every: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
