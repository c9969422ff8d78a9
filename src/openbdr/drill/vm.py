"""A drill VM: QEMU booting NBD-served disks, isolated, with console log, QMP and screenshots.

A disk whose point reader offers a direct source (`PointReader.direct_source()`: a block-mode
point on RBD) is booted straight from the snapshot: QEMU reads it natively as the read-only
backing of a throwaway qcow2 overlay in the drill's work directory, with no copy and no NBD
server in between.

Networking is either none or QEMU user networking with `restrict=on`: the guest can
reach nothing (not the host, not the outside); only the forwarded probe ports on
127.0.0.1 reach the guest. QEMU gets PR_SET_PDEATHSIG so it dies with its runner, and
the runner's registry lists it for the orphan sweep as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OpenBDRError
from .accel import QEMU, Accel
from .qmp import Qmp, QmpError
from .state import Registry, kill_pid, proc_start_time


class VmError(OpenBDRError):
    """The drill VM could not start or stopped unexpectedly."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class DirectDrive:
    """A disk QEMU reads in place (`source`: a `-blockdev` spec such as an RBD snapshot),
    behind a qcow2 overlay that takes the guest's writes and is thrown away."""

    source: dict[str, Any]
    size: int


def _opt(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text.replace(",", ",,")  # QEMU's option syntax doubles a literal comma


def drive_option(drive: str | DirectDrive, overlay: Path, bus: str) -> str:
    """The `-drive` value of one disk: an NBD URI, or a direct source under an overlay."""
    if isinstance(drive, str):
        return f"file={drive},format=raw,if={bus},cache=writeback"
    backing = ",".join(f"backing.{k}={_opt(v)}" for k, v in drive.source.items())
    return (
        f"if={bus},driver=qcow2,file.driver=file,file.filename={_opt(overlay)},"
        f"{backing},backing.read-only=on,cache=writeback"
    )


def direct_drives(readers: list[Any]) -> list[DirectDrive] | None:
    """Direct sources of every disk of a point (PointReaders), or None when any disk has
    none (then the drill serves them all over NBD, as before)."""
    out = []
    for r in readers:
        src = r.direct_source()
        if src is None:
            return None
        out.append(DirectDrive(src, r.size))
    return out


@dataclass
class VmConfig:
    #: NBD URIs (or image paths), or disks read in place
    drives: list[str | DirectDrive]
    accel: Accel
    memory_mib: int = 512
    cpus: int = 1
    network: bool = False
    #: guest port → host port on 127.0.0.1
    forwards: dict[int, int] = field(default_factory=dict)
    disk_bus: str = "virtio"
    nic_model: str = "virtio-net-pci"
    guest_agent: bool = False
    qemu: str = QEMU


class Vm:
    def __init__(self, config: VmConfig, workdir: Path, registry: Registry | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.registry = registry
        self.console = workdir / "console.log"
        self.qmp_path = workdir / "qmp.sock"
        self.qga_path = workdir / "qga.sock"
        self.serial_path = workdir / "serial.sock"
        self._serial: socket.socket | None = None
        self.stderr_path = workdir / "qemu.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self._start: int | None = None
        self.qmp: Qmp | None = None
        self.started_at = 0.0

    def command(self) -> list[str]:
        c = self.config
        cmd = [
            c.qemu,
            "-name",
            "openbdr-drill",
            "-machine",
            "pc",
            *c.accel.qemu_args(),
            "-m",
            str(c.memory_mib),
            "-smp",
            str(c.cpus),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-vga",
            "std",
            "-chardev",
            f"socket,id=con0,path={self.serial_path},server=on,wait=off,logfile={self.console}",
            "-serial",
            "chardev:con0",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        for i, drive in enumerate(c.drives):
            cmd += ["-drive", drive_option(drive, self.overlay(i), c.disk_bus)]
            if i == 0:
                cmd[-1] += ",index=0"
        if c.network:
            fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in c.forwards.items())
            cmd += ["-nic", f"user,restrict=on,model={c.nic_model}{fwd}"]
        else:
            cmd += ["-nic", "none"]
        if c.guest_agent:
            cmd += [
                "-chardev",
                f"socket,path={self.qga_path},server=on,wait=off,id=qga0",
                "-device",
                "virtio-serial",
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ]
        return cmd

    def overlay(self, i: int) -> Path:
        return self.workdir / f"overlay-{i}.qcow2"

    def _make_overlays(self) -> None:
        for i, drive in enumerate(self.config.drives):
            if isinstance(drive, DirectDrive):
                proc = subprocess.run(
                    [
                        "qemu-img",
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        str(self.overlay(i)),
                        str(drive.size),
                    ],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    raise VmError(f"cannot create the drill overlay: {proc.stderr.strip()}")

    def start(self) -> None:
        self._make_overlays()
        self.console.touch()
        with open(self.stderr_path, "wb") as errf:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=errf,
                stderr=errf,
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()
        self._start = proc_start_time(self.proc.pid)
        if self.registry:
            self.registry.add_pid(self.proc.pid)
        try:
            self.qmp = Qmp(str(self.qmp_path), timeout=30)
        except QmpError:
            self.check_running()
            raise

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_running(self) -> None:
        if not self.running():
            rc = self.proc.returncode if self.proc else None
            raise VmError(f"QEMU exited (rc {rc}): {self.stderr_tail() or 'no message'}")

    def console_text(self) -> str:
        try:
            return self.console.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def wait_console(self, pattern: str, timeout: float) -> re.Match[str] | None:
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.console_text())
            if m:
                return m
            if not self.running() or time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def send_console(self, text: str) -> None:
        """Type `text` on the serial console (a shell there gets it as input)."""
        if self._serial is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(self.serial_path))
            self._serial = sock
            # QEMU copies the console to this socket too; it stalls the guest's serial
            # port once the socket is full, so read it (the log file already has it all)
            threading.Thread(target=self._drain, args=(sock,), daemon=True).start()
        self._serial.sendall(text.encode())

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        sock.settimeout(None)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def screendump(self, png: Path) -> Path:
        """The VGA console as a PNG (QEMU ≥ 7.1 writes PNG; older ones give PPM)."""
        if self.qmp is None:
            raise VmError("no QMP connection for a screenshot")
        try:
            self.qmp.execute("screendump", filename=str(png), format="png")
            return png
        except QmpError:
            ppm = png.with_suffix(".ppm")
            self.qmp.execute("screendump", filename=str(ppm))
            from PIL import Image as PILImage

            PILImage.open(ppm).save(png)
            ppm.unlink(missing_ok=True)
            return png

    def stop(self, grace: float = 10.0) -> None:
        """ACPI poweroff isn't waited for: the overlay is thrown away, so `quit` is safe."""
        if self.proc is None:
            return
        if self.running() and self.qmp is not None:
            with contextlib.suppress(QmpError, OSError):
                self.qmp.execute("quit")
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            kill_pid(self.proc.pid, self._start, grace=2.0)
            self.proc.wait(10)
        if self.registry:
            self.registry.remove("pid", self.proc.pid)
        for p in (self.qmp_path, self.qga_path, self.serial_path):
            p.unlink(missing_ok=True)
        for i, drive in enumerate(self.config.drives):
            if isinstance(drive, DirectDrive):
                self.overlay(i).unlink(missing_ok=True)

    def __enter__(self) -> Vm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
