"""The shared benchmark corpus (../shared/bench), its partition, and checks of restored copies."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from measure import BenchError

ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCH = ROOT.parent / "shared" / "bench"
PART_OFFSET = 2048 * 512  # make_corpus.sh puts the ext4 partition at sector 2048
READY = "corpus.ok"


@dataclass(frozen=True)
class Corpus:
    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.img"

    @property
    def disk2(self) -> Path:
        return self.dir / "disk2.img"


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def ensure_corpus(where: Path) -> Corpus:
    """Reuse a finished corpus in `where`, or build it (about 2 minutes, needs root).

    Builders take a lock beside `where` and look for the marker again once they hold it:
    a second benchmark started during a build waits for it, rather than deleting the
    disk.img the first build's mutate.sh is deriving disk2.img from."""
    import fcntl

    corpus = Corpus(where)
    marker = where / READY

    def ready() -> bool:
        return marker.exists() and corpus.disk.exists() and corpus.disk2.exists()

    if ready():
        return corpus
    where.parent.mkdir(parents=True, exist_ok=True)
    with open(where.parent / f".{where.name}.build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():
            return corpus
        where.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        print(f"building the corpus in {where} (make_corpus.sh, mutate.sh) …", flush=True)
        subprocess.run(["bash", str(SHARED_BENCH / "make_corpus.sh"), str(where)], check=True)
        subprocess.run(["bash", str(SHARED_BENCH / "mutate.sh"), str(where)], check=True)
        marker.touch()
    return corpus


@contextlib.contextmanager
def loop_device(image: Path, offset: int = PART_OFFSET) -> Iterator[str]:
    """A read-only loop device over the image from `offset` (the ext4 partition)."""
    dev = _run(["losetup", "-r", "-f", "--show", "-o", str(offset), str(image)]).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def mounted(dev: str, where: Path) -> Iterator[Path]:
    """Mount an ext4 device read-only without replaying its journal."""
    where.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "ext4", "-o", "ro,noload", dev, str(where)])
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def ext4_usage(image: Path, scratch: Path) -> tuple[int, int]:
    """(used bytes as df counts them, allocated bytes including all metadata) of the partition."""
    with loop_device(image) as dev:
        head = _run(["dumpe2fs", "-h", dev])
        with mounted(dev, scratch / "usage") as mnt:
            st = os.statvfs(mnt)
    fields = dict(re.findall(r"^([A-Za-z ]+):\s+(\d+)\s*$", head, re.M))
    allocated = (int(fields["Block count"]) - int(fields["Free blocks"])) * int(
        fields["Block size"]
    )
    return (st.f_blocks - st.f_bfree) * st.f_frsize, allocated


def verify_same_bytes(restored: Path, original: Path) -> str:
    """A restore of all data must be the original image byte for byte."""
    proc = subprocess.run(["cmp", str(restored), str(original)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{restored} differs from {original}: {proc.stdout or proc.stderr}")
    return "cmp equal"


def verify_same_files(restored: Path, original: Path, scratch: Path) -> str:
    """A valid-data restore must hold a clean file system with the original's files."""
    with loop_device(restored) as dev_r, loop_device(original) as dev_o:
        fsck = subprocess.run(["fsck.ext4", "-fn", dev_r], capture_output=True, text=True)
        if fsck.returncode != 0:
            raise BenchError(f"fsck.ext4 -fn on the restored {restored} failed:\n{fsck.stdout}")
        with mounted(dev_r, scratch / "r") as a, mounted(dev_o, scratch / "o") as b:
            diff = subprocess.run(
                ["diff", "-rq", "--no-dereference", str(a), str(b)],
                capture_output=True,
                text=True,
            )
    if diff.returncode != 0:
        raise BenchError(f"files of {restored} differ from {original}:\n{diff.stdout[:2000]}")
    return "fsck clean, files equal"
