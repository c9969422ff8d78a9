"""Helpers shared by the tests: real images, loop devices, mounts, checksums."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OPENBDR = [str(ROOT / ".venv" / "bin" / "openbdr")]


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


def openbdr(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    proc = subprocess.run([*OPENBDR, *args], capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(
            f"openbdr {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_checksums(top: str | os.PathLike[str]) -> dict[str, str]:
    """Relative path -> sha256 of every regular file below `top` (lost+found excluded)."""
    out = {}
    top = Path(top)
    for dirpath, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "lost+found"]
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(top))] = sha256(p)
    return out


def make_ext4(path: Path, size_mib: int, content: Path | None = None) -> Path:
    """An ext4 image file, populated from `content` without mounting (mkfs.ext4 -d)."""
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    cmd = ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0"]
    if content is not None:
        cmd += ["-d", str(content)]
    run([*cmd, str(path)])
    return path


@contextlib.contextmanager
def loop_device(
    image: str | os.PathLike[str], offset: int = 0, size: int | None = None,
    read_only: bool = False,
) -> Iterator[str]:
    cmd = ["losetup", "-f", "--show", "-o", str(offset)]
    if size is not None:
        cmd += ["--sizelimit", str(size)]
    if read_only:
        cmd.append("-r")
    dev = run([*cmd, str(image)]).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def mounted(
    device: str, mountpoint: str | os.PathLike[str], options: str = "", fstype: str | None = None
) -> Iterator[Path]:
    mp = Path(mountpoint)
    mp.mkdir(parents=True, exist_ok=True)
    cmd = ["mount"]
    if fstype:
        cmd += ["-t", fstype]
    if options:
        cmd += ["-o", options]
    run([*cmd, device, str(mp)])
    try:
        yield mp
    finally:
        subprocess.run(["umount", str(mp)], check=False)


def is_root() -> bool:
    return os.geteuid() == 0
