"""A throw-away PostgreSQL 15 cluster for the agent tests (run as the `postgres` user)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PGBIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_pg(*cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


class Cluster:
    """A data directory, a private socket directory and a port."""

    def __init__(self, data: Path, sockdir: Path) -> None:
        self.data = data
        self.sockdir = sockdir
        self.port = free_port()
        sockdir.mkdir(parents=True, exist_ok=True)
        shutil.chown(sockdir, "postgres", "postgres")

    def initdb(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postgres", "postgres")
        os.chmod(self.data, 0o700)
        as_pg(str(PGBIN / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(self.data))

    def start(self, timeout: float = 300) -> None:
        opts = (
            f"-c port={self.port} -c unix_socket_directories={self.sockdir} -c listen_addresses=''"
        )
        as_pg(
            str(PGBIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.sockdir / "log"),
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 30,
        )

    def stop(self, mode: str = "fast") -> None:
        as_pg(str(PGBIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def args(self) -> list[str]:
        return ["-h", str(self.sockdir), "-p", str(self.port), "-U", "postgres"]

    def sql(self, query: str) -> str:
        return as_pg(
            str(PGBIN / "psql"), *self.args(), "-d", "postgres", "-Atc", query
        ).stdout.strip()

    def rows(self) -> int:
        return int(self.sql("select count(*) from pgbench_history"))

    def pgbench_init(self, scale: int) -> None:
        as_pg(str(PGBIN / "pgbench"), *self.args(), "-i", "-q", "-s", str(scale), "postgres")

    def pgbench(self, clients: int = 2, seconds: int = 3600) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PGBIN / "pgbench"),
                *self.args(),
                "-n",
                "-c",
                str(clients),
                "-j",
                str(clients),
                "-T",
                str(seconds),
                "postgres",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def amcheck(self) -> subprocess.CompletedProcess[str]:
        return as_pg(
            str(PGBIN / "pg_amcheck"),
            *self.args(),
            "--install-missing",
            "--heapallindexed",
            "-d",
            "postgres",
            check=False,
        )


def wait_for(pred, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
