"""Measuring one benchmark step: wall time, CPU time, peak RSS and disk reads of a process tree.

`os.wait4` on the step's top process returns the resource usage of that process and of
every descendant it waited for, so a shell pipeline (`partclone | zstd`) is measured as a
whole. Peak RSS is the kernel's `ru_maxrss`: the largest single process of the tree.
Disk reads are `ru_inblock` (bytes submitted to block devices), meaningful with a cold
page cache only.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


class BenchError(Exception):
    """A step failed or its result was wrong; the message names the step and the log."""


@dataclass
class Usage:
    wall: float
    user: float
    sys: float
    maxrss: int  # bytes
    disk_read: int  # bytes read from block devices by the tree

    @property
    def cpu(self) -> float:
        return self.user + self.sys


@dataclass
class Cache:
    """How the page cache is prepared before every step, the same way for all contenders.

    `cold`: flush dirty data and drop the page cache, so each step reads from the disk.
    `warm`: flush dirty data and read the step's inputs once, so each step reads from RAM.
    """

    mode: str = "cold"

    def prepare(self, inputs: Sequence[Path]) -> None:
        os.sync()
        if self.mode == "cold":
            DROP_CACHES.write_text("3\n")
            return
        files = [str(p) for p in inputs if p.is_file()]
        dirs = [str(p) for p in inputs if p.is_dir()]
        if files:
            subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
        for d in dirs:
            subprocess.run(
                ["find", d, "-type", "f", "-exec", "cat", "{}", "+"],
                stdout=subprocess.DEVNULL,
                check=True,
            )


def run_measured(
    cmd: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Usage:
    """Run `cmd` to completion (stdout in `log`, stderr in `log`.err) and measure its tree."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out, open(log.with_suffix(log.suffix + ".err"), "wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env={**os.environ, **(env or {})}, stdout=out, stderr=err
        )
        _pid, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.with_suffix(log.suffix + ".err").read_text(errors="replace")[-2000:]
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode} (log {log}):\n{tail}")
    return Usage(
        wall=wall,
        user=ru.ru_utime,
        sys=ru.ru_stime,
        maxrss=ru.ru_maxrss * 1024,
        disk_read=ru.ru_inblock * 512,
    )


def du(path: Path) -> int:
    """Bytes allocated on disk below `path` (what the repository or output really costs)."""
    if not path.exists():
        return 0
    out = subprocess.run(
        ["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[0])


def device_bytes(path: Path) -> int:
    """Bytes read plus written so far by the block device holding `path` (/proc/diskstats:
    every process, the kernel's write-out included); 0 when it is not a block device."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            if int(fields[0]) == major and int(fields[1]) == minor:
                return (int(fields[5]) + int(fields[9])) * 512
    return 0


def shell(script: str) -> list[str]:
    """A bash pipeline that fails when any of its commands fails."""
    return ["bash", "-o", "pipefail", "-c", script]
