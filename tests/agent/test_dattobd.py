"""dattobd / elastio-snap COW files crafted in the drivers' documented layout."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from openbdr.capture.base import ChangeToken
from openbdr.capture.linux.dattobd import (
    FLAG_CLEAN,
    FLAG_INDEX_ONLY,
    HEADER_SIZE,
    MAGIC,
    changed_extents,
    read_header,
)
from openbdr.capture.linux.snapdriver import Driver, DriverDiskSpec, DriverHost, detect
from openbdr.errors import SourceError
from openbdr.extents import Extent
from openbdr.restore import restore_disk
from openbdr.store.manifest import RestorePoint
from openbdr.store.target import init_target
from openbdr.sync import SyncOptions, sync

from ..helpers import loop_device, make_ext4, mounted

DEV = 64 * (1 << 20) + 4096 * 3  # a size that does not end on a 1 MiB boundary


def _cow(path: Path, changed: list[int], nblocks: int, magic: int = MAGIC) -> uuid.UUID:
    series = uuid.uuid4()
    head = struct.pack(
        "<IIQQQ16sQQ", magic, FLAG_CLEAN | FLAG_INDEX_ONLY, 0, 0, 7, series.bytes, 1, len(changed)
    )
    index = bytearray(nblocks * 8)
    for b in changed:
        struct.pack_into("<Q", index, b * 8, 1)  # incremental mode: a filler mapping
    path.write_bytes(head.ljust(HEADER_SIZE, b"\0") + bytes(index))
    return series


def test_index_lists_changed_blocks(tmp_path: Path) -> None:
    nblocks = -(-DEV // 4096)
    series = _cow(tmp_path / "cow", [0, 1, 2, 700, 5000, nblocks - 1], nblocks)
    h = read_header(tmp_path / "cow")
    assert (h.seqid, h.uuid, h.nr_changed_blocks) == (7, str(series), 6)
    assert h.clean and h.incremental
    assert changed_extents(tmp_path / "cow", DEV) == [
        Extent(0, 3 * 4096),
        Extent(700 * 4096, 4096),
        Extent(5000 * 4096, 4096),
        Extent((nblocks - 1) * 4096, 4096),
    ]


def test_foreign_or_short_files_are_refused(tmp_path: Path) -> None:
    _cow(tmp_path / "bad", [1], 16, magic=1234)
    with pytest.raises(SourceError, match="not a dattobd"):
        read_header(tmp_path / "bad")
    _cow(tmp_path / "short", [1], 16)
    with pytest.raises(SourceError, match="another device"):
        changed_extents(tmp_path / "short", DEV)


# -- the driver's cycle, through a fake dbdctl with the documented semantics -----------
FAKE = Path(__file__).with_name("fake_dbdctl.py")


@pytest.fixture
def fake_driver(tmp_path: Path) -> Driver:
    state = tmp_path / "fake"
    state.mkdir()
    ctl = tmp_path / "dbdctl"
    ctl.write_text(f'#!/bin/sh\nFAKE_DATTO_DIR={state} exec {sys.executable} {FAKE} "$@"\n')
    ctl.chmod(0o755)
    # the module is loaded: its info file is there, with no device yet
    (state / "datto-info").write_text('{"version": "0.11.0-fake", "devices": []}')
    return Driver("dattobd", str(ctl), state / "datto-info", str(state / "datto{minor}"))


@pytest.mark.root
def test_driver_cycle_full_incremental_failed_sync_and_failure_state(
    fake_driver: Driver, tmp_path: Path
) -> None:
    img = make_ext4(tmp_path / "disk.img", 64)
    repo = init_target(str(tmp_path / "repo"))
    with loop_device(img) as dev, mounted(dev, tmp_path / "mnt") as mnt:
        host = DriverHost("h", [DriverDiskSpec("disk0", dev)], tmp_path / "state", fake_driver)
        host.start()

        def write(name: str, n: int) -> None:
            (mnt / name).write_bytes(os.urandom(n))
            os.sync()

        def check(point: RestorePoint) -> None:
            """Crash-consistent: the restored ext4 replays its journal, then equals the source."""
            out = tmp_path / f"{point.id}.img"
            restore_disk(repo, point, point.disks[0], out)
            with loop_device(out) as rdev, mounted(rdev, tmp_path / "r"):
                diff = subprocess.run(
                    ["diff", "-r", "--exclude=.openbdr-cow-*", str(mnt), str(tmp_path / "r")],
                    capture_output=True,
                    text=True,
                )
            assert diff.returncode == 0, diff.stdout
            fsck = subprocess.run(["fsck.ext4", "-fn", str(out)], capture_output=True, text=True)
            assert fsck.returncode == 0, fsck.stdout
            out.unlink()

        write("a", 3 << 20)
        p1 = sync(repo, host, SyncOptions())
        assert p1.disks[0].mode == "full"
        info = fake_driver.entry(dev)
        assert info is not None and info["state"] == 2  # back in incremental mode
        check(p1)

        write("b", 2 << 20)
        p2 = sync(repo, host, SyncOptions())
        assert p2.disks[0].mode == "incremental"
        # only what changed is read: the new file's 2 MiB and a few metadata blocks
        assert 2 << 20 <= p2.disks[0].read_bytes <= 8 << 20
        check(p2)

        # a sync that fails after the snapshot: its changes are still known next time
        write("c", 1 << 20)
        latest = repo.latest("h")
        assert latest is not None
        with host.snapshot(ChangeToken.from_json(latest.token)) as snap:
            assert snap.disks[0].incremental
        assert not list((tmp_path / "mnt").glob(".openbdr-cow-*-1"))  # folded and deleted
        write("d", 1 << 20)
        p3 = sync(repo, host, SyncOptions())
        assert p3.disks[0].mode == "incremental"
        check(p3)

        # the driver reports a failure: the next sync resyncs
        data = json.loads(fake_driver.info.read_text())
        data["devices"][0]["error"] = -5
        fake_driver.info.write_text(json.dumps(data))
        p4 = sync(repo, host, SyncOptions())
        assert p4.disks[0].mode == "hash-compare"
        assert "failed" in (p4.disks[0].fallback_reason or "")
        check(p4)
        fake_driver.run("destroy", str(fake_driver.entry(dev)["minor"]))  # type: ignore[index]


def test_no_driver_is_detected_here() -> None:
    assert detect() is None or Path("/proc/datto-info").exists()
