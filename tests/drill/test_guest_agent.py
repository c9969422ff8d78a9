"""The guest-agent client against the real qemu-ga (run on the host over a unix socket)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbdr.drill.qga import GuestAgentError, guest_exec


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Path]:
    exe = shutil.which("qemu-ga")
    if exe is None:
        pytest.fail("qemu-ga is missing: run scripts/setup")
    sock = tmp_path / "qga.sock"
    proc = subprocess.Popen(
        [exe, "-m", "unix-listen", "-p", str(sock), "-t", str(tmp_path), "-F"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


def test_guest_exec_runs_a_command_and_returns_its_output(agent: Path) -> None:
    rc, out, err = guest_exec(agent, ["/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"])
    assert (rc, out, err) == (3, "hello\n", "oops\n")
    rc, out, _ = guest_exec(agent, ["/bin/cat", "/proc/self/status"])
    assert rc == 0 and f"PPid:\t{os.getpid()}" not in out  # it ran under the agent


def test_guest_exec_of_a_missing_program_is_an_agent_error(agent: Path) -> None:
    with pytest.raises(GuestAgentError):
        guest_exec(agent, ["/nonexistent/program"])
