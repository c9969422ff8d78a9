"""Checks before boot: boot signature, `fsck -n` of each volume, and mounting for file probes.

They read the point through the FUSE file (a throwaway overlay in front). Each volume is
first mounted there, so that the file system recovers as a boot would (XFS replays its
log, ext4 its journal) without touching the restore point, and only then checked.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OpenBDRError
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


def mount_options(fstype: str | None, options: str) -> str:
    """XFS refuses a second mount of the same UUID: the source may be mounted on this
    very host (a drill of the agent's own machine), so XFS copies mount with `nouuid`."""
    return f"{options},nouuid" if fstype == "xfs" else options


#: lines of a checker's output that say how far it got, not what it found
_PROGRESS = re.compile(
    r"^\s*(Phase \d|Pass \d|- |No modify flag set|Note - |Exiting now|"
    r"[\w./-]+: \d+/\d+ files \(|e2fsck \d|\S+ was not cleanly unmounted|Checking )"
)


def reasons(output: str, limit: int = 8) -> str:
    """The lines of a checker's output that say why it failed: progress and banner lines
    dropped, the first `limit` kept (the tail of `xfs_repair -n` is "Phase 7 … No modify
    flag set", which hides the reason)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    why = [ln for ln in lines if not _PROGRESS.match(ln)]
    return " | ".join((why or lines[-3:])[:limit])


def replay(res: Resources, disk_file: Path, vol: Volume, work: Path) -> str | None:
    """Mount the volume on the drill's overlay and unmount it, so that the file system runs
    its own recovery (XFS replays its log, ext4 its journal) before it is judged, as a
    boot would. Returns None, or why it could not be mounted (the check then judges the
    volume as it is, and a damaged one fails with the checker's reasons)."""
    where = work / f"replay-{disk_file.name}-{vol.number}"
    try:
        with res.scope():
            dev = res.loop(disk_file, vol.offset, vol.length)
            res.mount(dev, where, mount_options(vol.fstype, "ro"), vol.fstype)
    except OpenBDRError as exc:
        return str(exc)
    return None


def fsck_volume(
    res: Resources, disk_file: Path, disk_name: str, vol: Volume, work: Path | None = None
) -> Check:
    """`fsck -n` of a volume, after its own recovery on mount when `work` is given."""
    t = time.monotonic()
    name = f"fsck {disk_name} volume {vol.number} ({vol.fstype or 'unknown'})"
    cmd = FSCK.get(vol.fstype or "")
    if cmd is None:
        return Check(name, "fsck", True, f"no checker for {vol.fstype}: skipped", 0.0)
    mount_error = replay(res, disk_file, vol, work) if work is not None else None
    with res.scope():
        dev = res.loop(disk_file, vol.offset, vol.length, read_only=True)
        proc = subprocess.run([*cmd, dev], capture_output=True, text=True)
    out = (proc.stderr + "\n" + proc.stdout).strip()
    # e2fsck -n: 0 clean, 4 errors left uncorrected, 8 operational error (bad superblock)
    ok = proc.returncode == 0
    before = "" if work is None else ("after log replay on mount; " if not mount_error else "")
    if mount_error:
        before = f"did not mount ({mount_error[-300:]}); "
    detail = (
        f"{before}clean" if ok else f"{before}errors (exit {proc.returncode}): {reasons(out)}"
    )
    return Check(name, "fsck", ok, detail[:900], time.monotonic() - t)


def mount_volume(
    res: Resources, disk_file: Path, vol: Volume, where: Path, options: str = "ro"
) -> Path:
    """Mount a volume of a FUSE disk file; writes (journal replay too) stay in its overlay."""
    dev = res.loop(disk_file, vol.offset, vol.length)
    fstype = vol.fstype if vol.fstype in FSCK else None
    return res.mount(dev, where, mount_options(fstype, options), fstype)
