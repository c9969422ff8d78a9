"""Real ext4 images for block-mode tests (mkfs.ext4 -d and debugfs: no root, no mount)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def ext4_image(path: Path, size_mib: int = 48, seed: int = 1) -> Path:
    """An ext4 file system holding text, random and repetitive files."""
    src = path.with_suffix(".d")
    src.mkdir(parents=True, exist_ok=True)
    rnd = __import__("random").Random(seed)
    (src / "random.bin").write_bytes(rnd.randbytes(6 << 20))
    (src / "text.txt").write_text("".join(f"line {i} of seed {seed}\n" for i in range(200_000)))
    (src / "zeros-and-ones.bin").write_bytes((b"\0" * 4096 + b"\1" * 4096) * 256)
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-E",
            "root_owner=0:0",
            "-d",
            str(src),
            str(path),
            f"{size_mib}M",
        ],
        check=True,
        capture_output=True,
    )
    return path


def ext4_write(image: Path, name: str, data: bytes) -> None:
    """Add (or replace) a file in the image's file system, as a busy day would."""
    tmp = image.with_name(f".{name}.src")
    tmp.write_bytes(data)
    subprocess.run(
        ["debugfs", "-w", "-R", f"rm /{name}", str(image)], capture_output=True, check=False
    )
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {tmp} {name}", str(image)],
        check=True,
        capture_output=True,
    )
    tmp.unlink()


def scribble(image: Path, offset: int, data: bytes) -> None:
    fd = os.open(image, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
