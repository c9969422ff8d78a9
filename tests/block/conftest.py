"""Block-mode fixtures: a volume store per backend (local files, real Ceph RBD)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbdr.store.block.volumes import VolumeStore, open_store

from ..conftest import _read_env
from ..fakes.aws import ACCESS_KEY, SECRET_KEY, FakeAWS

OPENBDR = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "openbdr"


@pytest.fixture(scope="session")
def rbd_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """A running cluster's env file in $OPENBDR_CEPH_ENV (reused), else the session's cluster."""
    path = os.environ.get("OPENBDR_CEPH_ENV")
    if path:
        env = _read_env(path)
        os.environ.update(env)
        return env
    env: dict[str, str] = request.getfixturevalue("ceph")
    return env


@pytest.fixture
def fake_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAWS]:
    """The AWS fake on loopback, its keys in the environment (gateways started by the test
    inherit them: the standard credential chain finds them)."""
    fake = FakeAWS(tmp_path / "fake-aws").start()
    fake.account.completion_delay = 0.05
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield fake
    fake.stop()


def ebs_url(fake: FakeAWS, **extra: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"poll": "0.02", "retries": "8", **extra}.items())
    return f"ebs://{fake.account.region}?endpoint={fake.url}&{query}"


@pytest.fixture(params=["file", "rbd"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty volume store of each backend (`ebs` when a test asks for it: the
    AWS EBS direct APIs of the fake)."""
    if request.param == "file":
        yield f"file://{tmp_path / 'volumes'}"
        return
    if request.param == "ebs":
        yield ebs_url(request.getfixturevalue("fake_aws"))
        return
    env = request.getfixturevalue("rbd_env")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    url = f"rbd://{env.get('RBD_POOL', 'rbd')}?prefix={prefix}&conf={env['CEPH_CONF']}"
    yield url
    store = open_store(url)
    for name in store.names():
        store.delete(name)
    store.close()


@pytest.fixture
def store(backend_url: str) -> Iterator[VolumeStore]:
    s = open_store(backend_url)
    yield s
    s.close()


class GatewayProc:
    """`openbdr gateway serve` in its own process (so that a test can SIGKILL it)."""

    def __init__(self, root: Path, volumes: str) -> None:
        self.root = root
        self.volumes = volumes
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.token_file = root / "agent.token"
        subprocess.run(
            [
                str(OPENBDR),
                "gateway",
                "token",
                "add",
                "--root",
                str(root),
                "agent-1",
                "--out",
                str(self.token_file),
            ],
            check=True,
            capture_output=True,
        )
        self.start()

    def start(self) -> None:
        port_file = self.root / "port"
        port_file.unlink(missing_ok=True)
        listen = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                str(OPENBDR),
                "gateway",
                "serve",
                "--root",
                str(self.root),
                "--volumes",
                self.volumes,
                "--listen",
                listen,
                "--port-file",
                str(port_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "gateway.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.root / "gateway.log").read_text()[-2000:])
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    @property
    def url(self) -> str:
        ca = self.root / "tls" / "cert.pem"
        return f"gateway://127.0.0.1:{self.port}?ca={ca}&token_file={self.token_file}&retry=30"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def gateway(backend_url: str, tmp_path: Path) -> Iterator[GatewayProc]:
    """A gateway on loopback writing into each volume backend."""
    g = GatewayProc(tmp_path / "gw", backend_url)
    yield g
    g.stop()
