"""Which accelerator really works: a `/dev/kvm` can exist and still fail to run guests.

The probe boots a 512-byte boot sector under `-accel kvm -cpu host` that enters 32-bit
protected mode, returns through `iretd`, writes "OK" to the serial port and leaves
through `isa-debug-exit`; anything else means TCG. The
verdict is cached per kernel and QEMU binary in the drill state directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .state import state_dir

QEMU = "qemu-system-x86_64"

# Real mode: cli; lgdt; set CR0.PE; far jump to 32-bit code; load data segments; then an
# `iretd` (what real boot loaders do, and what a nested PVM "KVM" cannot emulate: a
# real-mode-only probe ran there while SYSLINUX died with "KVM internal error"); then
# "OK" to COM1 and out 0xf4 (isa-debug-exit). GDT: null, 4 GiB code, 4 GiB data.
_BOOT = bytes.fromhex(
    "fa31c08ed80f0116587c0f20c06683c8010f22c0ea197c080066b810008ed88ed0bc00700000"
    "9c6a08682f7c0000cf66baf803b04feeb04beeb010e6f4f4ebfd0000000000000000ffff0000"
    "009acf00ffff00000092cf001700407c0000"
)
_EXIT_OK = (0x10 << 1) | 1


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str

    def qemu_args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        return ["-accel", "tcg"]


def boot_sector() -> bytes:
    return _BOOT + bytes(510 - len(_BOOT)) + b"\x55\xaa"


def probe_guest(accel: list[str], qemu: str = QEMU, timeout: float = 20.0) -> tuple[bool, str]:
    """Boot the probe sector with `accel` arguments: (ran, why not)."""
    with tempfile.TemporaryDirectory(prefix="openbdr-kvmprobe-") as tmp:
        disk = Path(tmp) / "probe.img"
        disk.write_bytes(boot_sector())
        serial = Path(tmp) / "serial.log"
        cmd = [
            qemu,
            *accel,
            "-m",
            "16",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{serial}",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive",
            f"file={disk},format=raw,if=ide",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, "the probe guest did not finish"
        except OSError as exc:
            return False, f"cannot run {qemu}: {exc}"
        out = serial.read_text(errors="replace") if serial.exists() else ""
        if proc.returncode == _EXIT_OK and "OK" in out:
            return True, ""
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"rc {proc.returncode}: {tail}"


def probe_kvm(qemu: str = QEMU, timeout: float = 20.0) -> Accel:
    """KVM if the probe guest runs under it, else TCG (with the reason); never raises."""
    if not os.path.exists("/dev/kvm"):
        return Accel("tcg", "no /dev/kvm")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel("tcg", "/dev/kvm is not accessible")
    ok, why = probe_guest(Accel("kvm", "").qemu_args(), qemu, timeout)
    if ok:
        return Accel("kvm", "KVM probe guest ran")
    note = " on nested kvm_pvm" if os.path.isdir("/sys/module/kvm_pvm") else ""
    return Accel("tcg", f"KVM probe guest failed{note} ({why})")


def _cache_key(qemu: str) -> str:
    path = shutil.which(qemu) or qemu
    try:
        st = os.stat(path)
        stamp = f"{st.st_ino}-{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    # the probe's own bytes too: a verdict of an older, weaker probe is not reused
    return f"{os.uname().release}|{path}|{stamp}|{hashlib.sha256(_BOOT).hexdigest()[:12]}"


def choose_accel(qemu: str = QEMU, force: str | None = None, refresh: bool = False) -> Accel:
    """`force` ('kvm'/'tcg') wins; otherwise the cached or freshly probed verdict."""
    if force in ("kvm", "tcg"):
        return Accel(force, "chosen by the caller")
    cache = state_dir() / "accel.json"
    key = _cache_key(qemu)
    if not refresh:
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                return Accel(data["name"], data["reason"] + " (cached)")
        except (OSError, ValueError, KeyError):
            pass
    verdict = probe_kvm(qemu)
    tmp = cache.with_suffix(f".{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "name": verdict.name, "reason": verdict.reason}))
    os.replace(tmp, cache)
    return verdict
