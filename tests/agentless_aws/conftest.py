"""The AWS source against the faithful fake (tests/fakes/aws): an account on loopback
whose EBS volumes are image files in the test's directory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openbdr.capture.aws import AwsHost
from openbdr.capture.registry import open_source
from openbdr.store.manifest import RestorePoint
from openbdr.store.target import init_target, open_target
from openbdr.sync import SyncOptions, sync

from ..fakes.aws import BLOCK, GIB, FakeAWS
from ..helpers import SHARED, openbdr

MAKE_DISK = SHARED / "fixtures" / "make-bootable-disk"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeAWS]:
    f = FakeAWS(tmp_path / "fake").start()
    f.account.completion_delay = 0.1
    yield f
    f.stop()


@pytest.fixture(scope="session")
def bootable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared bootable fixture disk (busybox, 512 MiB), built once per session."""
    if os.geteuid() != 0:
        pytest.skip("make-bootable-disk needs root (loop devices, mounts)")
    img = tmp_path_factory.mktemp("aws-boot") / "boot.img"
    proc = subprocess.run(
        [str(MAKE_DISK), str(img), "--size", "512M", "--marker", "aws-point"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return img


def image(path: Path, writes: list[tuple[int, int]], seed: int = 1) -> Path:
    """A sparse 1 GiB volume image with random bytes at (offset, length)."""
    with open(path, "wb") as f:
        f.truncate(GIB)
    write(path, writes, seed)
    return path


def write(path: Path, writes: list[tuple[int, int]], seed: int = 0) -> set[int]:
    """Write random bytes into a backing image, as the guest would; the 512 KiB blocks
    touched."""
    touched: set[int] = set()
    fd = os.open(path, os.O_WRONLY)
    try:
        for off, n in writes:
            os.pwrite(fd, os.urandom(n), off)
            touched.update(range(off // BLOCK, -(-(off + n) // BLOCK)))
    finally:
        os.close(fd)
    return touched


def discard(path: Path, offset: int, length: int) -> None:
    """Punch a hole (a TRIM): the blocks leave later snapshots."""
    subprocess.run(["fallocate", "-p", "-o", str(offset), "-l", str(length), str(path)], check=True)


def spec(fake: FakeAWS, instance: str, **options: Any) -> dict[str, Any]:
    return {
        "type": "aws",
        "platform": {
            "endpoint": fake.account.region,
            "credentials": fake.credentials(),
            "options": {"endpoint_url": fake.url, "poll_interval": 0.05, **options},
        },
        "vm": instance,
    }


def open_host(fake: FakeAWS, instance: str, name: str = "web1", **options: Any) -> AwsHost:
    host = open_source(name, spec(fake, instance, **options))
    assert isinstance(host, AwsHost)
    return host


def run_sync(repo: Path, host: AwsHost, full: bool = False) -> RestorePoint:
    """One sync through the engine into an object repository at `repo`."""
    target = open_target(str(repo)) if (repo / "config").exists() else init_target(str(repo))
    return sync(target, host, SyncOptions(threads=4, full=full))


def same_bytes(a: Path, b: Path) -> bool:
    """Two images hold the same bytes (holes read as zeros); only data ranges are read."""
    if a.stat().st_size != b.stat().st_size:
        return False
    from ..fakes.aws.state import data_ranges

    size = a.stat().st_size
    with open(a, "rb") as fa, open(b, "rb") as fb:
        os.fsync(fa.fileno())  # SEEK_DATA misses dirty pages over unwritten extents
        os.fsync(fb.fileno())
        ranges = sorted(data_ranges(fa.fileno(), size) + data_ranges(fb.fileno(), size))
        for start, end in ranges:
            pos = start
            while pos < end:
                n = min(8 << 20, end - pos)
                if os.pread(fa.fileno(), n, pos) != os.pread(fb.fileno(), n, pos):
                    return False
                pos += n
    return True


def restored(repo: Path, host: str, point: str, disk: int, out: Path) -> Path:
    openbdr(
        "restore",
        "--repo",
        str(repo),
        "--host",
        host,
        "--point",
        point,
        "--disk",
        str(disk),
        "--to",
        str(out),
    )
    return out


def assert_point_is(repo: Path, point: RestorePoint, images: dict[str, Path], tmp: Path) -> None:
    """Every disk of the point equals the image its volume had at the snapshot."""
    for rec in point.disks:
        out = restored(repo, point.host, point.id, rec.index, tmp / f"r-{point.id}-{rec.index}.img")
        assert same_bytes(out, images[rec.name]), f"disk {rec.name} of {point.id} differs"
        out.unlink()
