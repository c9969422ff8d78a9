"""Isolation: a drill guest or service reaches nothing but itself; probes still reach it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import SHARED, make_ext4, openbdr
from .leaks import leaked, snapshot

pytestmark = [pytest.mark.root, pytest.mark.slow]


class Listener:
    """A host service on 127.0.0.1 that counts the connections it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def test_vm_guest_cannot_reach_the_host_or_anything_else(
    tmp_path: Path, state_dir: Path, listener: Listener
) -> None:
    img = tmp_path / "boot.img"
    proc = subprocess.run(
        [str(SHARED / "fixtures" / "make-bootable-disk"), str(img)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "--all-data", "--repo", repo, "--host", "iso", str(img))
    p = listener.port
    plan = tmp_path / "plan.toml"
    plan.write_text(f"""
[drill]
fsck = false
network = "probes"

[[probe]]
type = "console"
pattern = "OPENBDR-GUEST-READY"
timeout = 300

[[probe]]
type = "http"
name = "forwarded probe port answers"
port = 80
contains = "marker"

[[probe]]
type = "shell"
name = "guest's own web server answers (the tools work)"
command = "timeout 5 wget -q -O - http://127.0.0.1:80/ | grep -c marker"
expect = "1"

[[probe]]
type = "shell"
name = "host listener unreachable"
command = "! timeout 5 nc 10.0.2.2 {p} </dev/null"

[[probe]]
type = "shell"
name = "host web via gateway unreachable"
command = "! timeout 5 wget -q -O /dev/null http://10.0.2.2:{p}/"

[[probe]]
type = "shell"
name = "QEMU's virtual DNS host unreachable"
command = "! timeout 5 nc 10.0.2.3 53 </dev/null"
""")
    env = {**os.environ, "OPENBDR_STATE_DIR": str(state_dir)}
    before = snapshot(os.environ["TMPDIR"])
    out = openbdr(
        "drill",
        "run",
        "--repo",
        repo,
        "--host",
        "iso",
        "--plan",
        str(plan),
        "--json",
        "--no-mark",
        check=False,
        env=env,
        timeout=900,
    )
    rep = json.loads(out.stdout)
    assert rep["verdict"] == "passed", json.dumps(rep["probes"], indent=1)
    assert listener.hits == 0
    assert leaked(before, snapshot(os.environ["TMPDIR"])) == {}


def test_service_namespace_cannot_reach_the_host(
    tmp_path: Path, state_dir: Path, listener: Listener
) -> None:
    content = tmp_path / "c"
    content.mkdir()
    (content / "hello.txt").write_text("hi\n")
    img = make_ext4(tmp_path / "vol.img", 32, content)
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "--all-data", "--repo", repo, "--host", "svc", str(img))
    probe_host = f"import socket; socket.create_connection(('127.0.0.1', {listener.port}), 3)"
    plan = tmp_path / "plan.toml"
    plan.write_text(f"""
[drill]
kind = "service"

[service]
type = "command"
command = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "8080"]

[[probe]]
type = "http"
name = "service answers inside its namespace"
port = 8080
path = "/hello.txt"
contains = "hi"
timeout = 30

[[probe]]
type = "command"
name = "host listener unreachable from the namespace"
command = ["sh", "-c", "! python3 -c \\"{probe_host}\\""]

[[probe]]
type = "command"
name = "no route anywhere"
command = ["sh", "-c", "ip route | grep -c . | grep -qx 0"]
""")
    env = {**os.environ, "OPENBDR_STATE_DIR": str(state_dir)}
    before = snapshot(os.environ["TMPDIR"])
    out = openbdr(
        "drill",
        "run",
        "--repo",
        repo,
        "--host",
        "svc",
        "--plan",
        str(plan),
        "--json",
        check=False,
        env=env,
        timeout=600,
    )
    rep = json.loads(out.stdout)
    assert rep["verdict"] == "passed", json.dumps(rep, indent=1)
    assert listener.hits == 0
    assert leaked(before, snapshot(os.environ["TMPDIR"])) == {}
