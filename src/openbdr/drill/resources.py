"""What a drill or a mount starts, torn down in reverse order, always, and registered.

`Resources` is an ExitStack whose every step is also written to the orphan registry
(`state.Registry`) before it can leak, so a runner killed at any moment leaves a
record the next run undoes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import OpenBDRError
from .state import Registry, clean_orphans, kill_pid, proc_start_time


class DrillEnvError(OpenBDRError):
    """A piece of the isolated environment (mount, loop device, namespace) failed."""


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DrillEnvError(f"{what} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


class Resources:
    def __init__(self, drill_id: str, *, sweep: bool = True) -> None:
        if sweep:
            clean_orphans()
        self.id = drill_id
        self.registry = Registry(drill_id)
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Resources:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stack.close()
        finally:
            self.registry.close()

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """What is started inside the block is torn down when it ends, not with the drill
        (a mount that must be gone before the next step: replay, then fsck)."""
        outer, self.stack = self.stack, contextlib.ExitStack()
        try:
            with self.stack:
                yield
        finally:
            self.stack = outer

    def tempdir(self, prefix: str = "openbdr-drill-") -> Path:
        d = Path(tempfile.mkdtemp(prefix=prefix))
        self.registry.add("path", str(d))

        def rm() -> None:
            import shutil

            shutil.rmtree(d, ignore_errors=True)
            self.registry.remove("path", str(d))

        self.stack.callback(rm)
        return d

    def fuse_point(
        self,
        repo_url: str,
        host: str,
        point: str,
        mountpoint: Path,
        *,
        overlay: bool,
        tmpdir: Path | None = None,
    ) -> Path:
        """Run the FUSE file server for a point; returns the mount point once mounted."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "openbdr.drill.fusefile",
            repo_url,
            host,
            point,
            str(mountpoint),
        ]
        if overlay:
            cmd.append("--overlay")
        if tmpdir:
            cmd += ["--tmpdir", str(tmpdir)]
        errlog = (tmpdir or mountpoint.parent) / f"fuse-{mountpoint.name}.log"
        with open(errlog, "wb") as errf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf)
        start = proc_start_time(proc.pid)
        self.registry.add_pid(proc.pid)
        self.registry.add("mount", str(mountpoint))

        def stop() -> None:
            if os.path.ismount(mountpoint):
                subprocess.run(["umount", str(mountpoint)], capture_output=True)
                if os.path.ismount(mountpoint):
                    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                kill_pid(proc.pid, start, grace=2)
                proc.wait(10)
            self.registry.remove("mount", str(mountpoint))
            self.registry.remove("pid", proc.pid)

        self.stack.callback(stop)
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                msg = errlog.read_text(errors="replace").strip().splitlines()
                raise DrillEnvError(
                    f"cannot serve point {point} of {host} as files: "
                    + (msg[-1] if msg else f"exit {proc.returncode}")
                )
            if time.monotonic() > deadline:
                raise DrillEnvError(f"FUSE mount of point {point} did not appear at {mountpoint}")
            time.sleep(0.05)
        return mountpoint

    def loop(
        self, path: Path, offset: int = 0, size: int | None = None, read_only: bool = False
    ) -> str:
        cmd = ["losetup", "-f", "--show", "-o", str(offset)]
        if size is not None:
            cmd += ["--sizelimit", str(size)]
        if read_only:
            cmd.append("-r")
        dev = _run([*cmd, str(path)], f"losetup of {path}").strip()
        self.registry.add("loop", dev)

        def detach() -> None:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
            self.registry.remove("loop", dev)

        self.stack.callback(detach)
        return dev

    def mount(
        self, dev: str, mountpoint: Path, options: str = "ro", fstype: str | None = None
    ) -> Path:
        mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = ["mount", "-o", options]
        if fstype:
            cmd += ["-t", fstype]
        _run([*cmd, dev, str(mountpoint)], f"mount of {dev}")
        self.registry.add("mount", str(mountpoint))

        def umount() -> None:
            proc = subprocess.run(["umount", str(mountpoint)], capture_output=True)
            if proc.returncode != 0:
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
            self.registry.remove("mount", str(mountpoint))

        self.stack.callback(umount)
        return mountpoint

    def netns(self, name: str) -> str:
        _run(["ip", "netns", "add", name], f"network namespace {name}")
        self.registry.add("netns", name)

        def delete() -> None:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            self.registry.remove("netns", name)

        self.stack.callback(delete)
        _run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], "netns lo up")
        return name
