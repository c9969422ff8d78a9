"""Every source that runs without special hardware passes the source conformance suite
here; the Linux agent's sources run it in tests/agent (they need root and loop devices)."""

from __future__ import annotations

import random
from pathlib import Path

from openbdr.capture.image import open_host
from openbdr.capture.registry import open_source, parse_spec
from openbdr.capture.synthetic import SynthHost

from .sources import check_source


def test_synthetic_source() -> None:
    rounds = check_source(SynthHost("s1", blocks=5, disks=2), lambda r: None, rounds=4)
    assert all(d["incremental"] for info in rounds[1:] for d in info.values())


def test_synthetic_from_the_registry() -> None:
    host = open_source("s2", parse_spec("synthetic:blocks=3"))
    check_source(host, lambda r: None, rounds=2)


def test_image_source(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    rng = random.Random(7)
    with img.open("wb") as f:
        f.truncate(9 << 20)
        f.write(rng.randbytes(3 << 20))
        f.seek(6 << 20)
        f.write(rng.randbytes(700_000))

    def change(r: int) -> None:
        with img.open("r+b") as f:
            f.seek(r << 20)
            f.write(rng.randbytes(5000))

    rounds = check_source(open_host("img", [str(img)], valid_only=False), change)
    # no change tracking: every later pass says why it is a hash-compare
    assert all(d["reason"] for info in rounds[1:] for d in info.values())
