"""Test disks: ext4 images with compressible, unique-per-block content; catalog rows."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from openbdr.control.models import Policy, Target

from ..helpers import make_ext4


def target_and_policy(s: Session, repo: Path, enabled: bool = True) -> tuple[Target, Policy]:
    """Target `dr` at `repo` and policy `p` (10-minute RPO, no compression), flushed so
    their ids are set; a disabled policy starts no syncs."""
    t = Target(name="dr", url=str(repo))
    p = Policy(name="p", rpo_seconds=600, compression="none", compression_level=1,
               bwlimit=0, bandwidth_windows=[], retention={}, drill_plan={}, enabled=enabled)
    s.add_all([t, p])
    s.flush()
    return t, p


def compressible_files(top: Path, mib: int, seed: str = "a") -> Path:
    """`mib` MiB of text in 4 MiB files: every block unique, zstd shrinks it ~5×."""
    top.mkdir(parents=True, exist_ok=True)
    for n in range((mib + 3) // 4):
        lines = (f"{seed} file {n} line {i:09d} the quick brown fox jumps\n"
                 for i in range((4 << 20) // 48))
        (top / f"f{n:03d}.txt").write_text("".join(lines))
    return top


def disk_image(tmp: Path, name: str = "disk.img", data_mib: int = 40, size_mib: int = 64) -> Path:
    content = compressible_files(tmp / f"{name}.content", data_mib)
    return make_ext4(tmp / name, size_mib, content)


def chunk_codecs(repo: Path) -> dict[int, int]:
    """Codec byte of every chunk object in a directory repository → count."""
    out: dict[int, int] = {}
    for p in (repo / "chunks").rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                head = f.read(8)
            if head[:4] == b"OBCK":
                out[head[5]] = out.get(head[5], 0) + 1
    return out
