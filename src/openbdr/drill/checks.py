"""Checks before boot: boot signature, `fsck -n` of each volume, and mounting for file probes.

They read the point through the FUSE file (a throwaway overlay in front), so a dirty
journal can be looked at without touching the restore point.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .image import Image
from .resources import Resources
from .volumes import Volume

FSCK: dict[str, list[str]] = {
    "ext4": ["e2fsck", "-f", "-n"],
    "ext3": ["e2fsck", "-f", "-n"],
    "ext2": ["e2fsck", "-f", "-n"],
    "xfs": ["xfs_repair", "-n"],
    "btrfs": ["btrfs", "check", "--readonly"],
    "ntfs": ["ntfsfix", "-n"],
}


@dataclass
class Check:
    name: str
    type: str
    ok: bool
    detail: str
    duration: float

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def boot_signature(image: Image, disk_name: str) -> Check:
    t = time.monotonic()
    sector = image.pread(0, 512)
    ok = len(sector) == 512 and sector[510:512] == b"\x55\xaa"
    detail = (
        "sector 0 ends with the 55 AA boot signature"
        if ok
        else f"sector 0 has no boot signature (ends {sector[510:512].hex() or 'short'}): "
        "the BIOS will not boot this disk"
    )
    return Check(f"boot sector of {disk_name}", "bootsector", ok, detail, time.monotonic() - t)


def fsck_volume(res: Resources, disk_file: Path, disk_name: str, vol: Volume) -> Check:
    t = time.monotonic()
    name = f"fsck {disk_name} volume {vol.number} ({vol.fstype or 'unknown'})"
    cmd = FSCK.get(vol.fstype or "")
    if cmd is None:
        return Check(name, "fsck", True, f"no checker for {vol.fstype}: skipped", 0.0)
    replay = ""
    if vol.fstype in ("ext3", "ext4"):
        # a crash-consistent point (a live platform snapshot) has a journal to replay,
        # as the guest's own mount would: into the throwaway overlay, then check
        # (only then: e2fsck would also mend a damaged superblock from a backup one)
        dev = res.loop(disk_file, vol.offset, vol.length)
        head = subprocess.run(["dumpe2fs", "-h", dev], capture_output=True, text=True)
        if head.returncode == 0 and "needs_recovery" in head.stdout:
            subprocess.run(
                ["e2fsck", "-E", "journal_only", "-y", dev], capture_output=True, text=True
            )
            replay = "journal replayed; "
    else:
        dev = res.loop(disk_file, vol.offset, vol.length, read_only=True)
    proc = subprocess.run([*cmd, dev], capture_output=True, text=True)
    out = replay + (proc.stderr + "\n" + proc.stdout).strip()
    # e2fsck -n: 0 clean, 4 errors left uncorrected, 8 operational error (bad superblock)
    ok = proc.returncode == 0
    last = [ln for ln in out.splitlines() if ln.strip()]
    summary = " | ".join(last[-3:]) if last else ""
    detail = ("clean: " if ok else f"errors (exit {proc.returncode}): ") + summary[-600:]
    return Check(name, "fsck", ok, detail, time.monotonic() - t)


def mount_volume(
    res: Resources, disk_file: Path, vol: Volume, where: Path, options: str = "ro"
) -> Path:
    """Mount a volume of a FUSE disk file; writes (journal replay too) stay in its overlay."""
    dev = res.loop(disk_file, vol.offset, vol.length)
    return res.mount(dev, where, options, vol.fstype if vol.fstype in FSCK else None)
