"""Valid data of unmounted volumes whose log or journal needs replay.

An XFS log that is not clean, or an ext4 journal that needs recovery, may hold
allocations the on-disk bitmaps do not show yet, so `volume.analyze` keeps such a volume
whole. Here the volume is replayed the way the kernel does it, on a throwaway overlay:
the bytes of the volume as a FUSE file behind a copy-on-write overlay
(`python -m openbdr.overlay`), a loop device over it, a read-only mount (which replays,
the loop device being writable) and unmount; the bitmaps are then read from the
overlay. The source is only read. When that cannot be done (no root, no FUSE, a log the
kernel refuses) the volume stays whole and the reason is added to its note, so it ends
in the point's `fallback_reason`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from ..errors import OpenBDRError
from ..overlay import VOLUME
from ..volume import analyze, probe_filesystem
from ..volume.model import DiskLayout, FilesystemInfo
from ..volume.reader import BlockReader, FileReader

log = logging.getLogger(__name__)

#: notes of the parsers that a replay resolves
NEEDS_REPLAY = ("until the log is replayed", "journal needs recovery")
KINDS = ("xfs", "ext4")


class ReplayError(OpenBDRError):
    """A volume's log could not be replayed on an overlay."""


def needs_replay(fs: FilesystemInfo | None) -> bool:
    return (
        fs is not None
        and not fs.exact
        and fs.kind in KINDS
        and any(s in (fs.note or "") for s in NEEDS_REPLAY)
    )


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReplayError(f"{what}: {(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc.stdout.strip()


@contextlib.contextmanager
def overlay_file(path: str, start: int, length: int, tmp: Path) -> Iterator[Path]:
    """Bytes `start`..`start + length` of `path` as a writable FUSE file whose writes are
    thrown away; the FUSE server is stopped on exit."""
    mp = tmp / "fuse"
    mp.mkdir()
    errlog = tmp / "fuse.log"
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "openbdr.overlay", path, str(start), str(length), str(mp),
             "--tmpdir", str(tmp)],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                msg = errlog.read_text(errors="replace").strip().splitlines()
                raise ReplayError(
                    "cannot start the overlay: " + (msg[-1] if msg else "FUSE mount timed out")
                )
            time.sleep(0.05)
        yield mp / VOLUME
    finally:
        if os.path.ismount(mp):
            subprocess.run(["umount", str(mp)], capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def replayed_map(path: str, start: int, length: int, kind: str) -> FilesystemInfo:
    """The file system at `start` of `path` mapped after its log is replayed on an
    overlay (offsets absolute, as `probe_filesystem` gives them)."""
    if os.geteuid() != 0:
        raise ReplayError("replaying a log needs root (loop devices and mounts)")
    with tempfile.TemporaryDirectory(prefix="openbdr-replay-") as t:
        tmp = Path(t)
        with overlay_file(path, start, length, tmp) as vol:
            loop = _run(["losetup", "-f", "--show", str(vol)], "losetup of the overlay")
            try:
                mnt = tmp / "mnt"
                mnt.mkdir()
                opts = "ro,nouuid" if kind == "xfs" else "ro"
                _run(["mount", "-t", kind, "-o", opts, loop, str(mnt)], f"mount of {kind}")
                _run(["umount", str(mnt)], "unmount after replay")
            finally:
                subprocess.run(["losetup", "-d", loop], capture_output=True)
            reader = FileReader(vol)
            try:
                info = probe_filesystem(reader, start, length)
            finally:
                reader.close()
    if not info.exact or info.kind != kind:
        raise ReplayError(f"still not mapped after replay: {info.note}")
    info.mapped_by = "replayed"
    info.note = None
    return info


def analyze_replayed(
    reader: BlockReader,
    path: str,
    known: Mapping[int, FilesystemInfo] | None = None,
    skip: Collection[int] = (),
) -> DiskLayout:
    """`volume.analyze` of the disk at `path`, with every unmounted volume whose log
    needs replay mapped after a replay on an overlay (or kept whole, saying why).
    `skip`: starts of volumes that are mounted (a live device is not replayed)."""
    layout = analyze(reader, known)
    volumes: list[tuple[int, int, FilesystemInfo]] = []
    if needs_replay(layout.filesystem):
        assert layout.filesystem is not None
        volumes.append((0, layout.size, layout.filesystem))
    volumes += [
        (p.start, p.length, p.filesystem)
        for p in layout.partitions
        if p.filesystem is not None and needs_replay(p.filesystem)
    ]
    volumes = [v for v in volumes if v[0] not in skip]
    if not volumes:
        return layout
    replayed = dict(known or {})
    for start, length, fs in volumes:
        assert fs.kind is not None
        t = time.monotonic()
        try:
            replayed[start] = replayed_map(path, start, length, fs.kind)
            log.info("%s: %s at %d replayed on an overlay in %.1f s", path, fs.kind, start,
                     time.monotonic() - t)  # fmt: skip
        except (OpenBDRError, OSError) as exc:
            fs.note = f"{fs.note}; replay on an overlay failed: {exc}"
    if len(replayed) == len(known or {}):
        return layout
    again = analyze(reader, replayed)
    for p in again.partitions:  # keep the failure notes of volumes still whole
        old = next((q for q in layout.partitions if q.start == p.start), None)
        if old is not None and p.start not in replayed:
            p.filesystem = old.filesystem
    return again
