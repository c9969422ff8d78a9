"""Tracker and freeze on real loop devices: continuity across a clean restart, lost events
and reboots force a resync, and a frozen file system is always thawed."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbdr.capture.linux.bitmap import TrackState
from openbdr.capture.linux.devices import resolve
from openbdr.capture.linux.freeze import Freezer
from openbdr.capture.linux.freezewatch import FIFREEZE, FITHAW
from openbdr.capture.linux.tracker import DiskTracker

from ..helpers import loop_device, make_ext4, mounted, run
from .pg import wait_for

pytestmark = pytest.mark.root

MiB = 1 << 20


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="openbdr-track-"))
    yield d
    run(["rm", "-rf", str(d)])


def _write(dev: str, block: int, count: int = 1, bs: int = MiB) -> None:
    run(
        [
            "dd",
            "if=/dev/urandom",
            f"of={dev}",
            f"bs={bs}",
            f"count={count}",
            f"seek={block * MiB // bs}",
            "oflag=direct",
            "status=none",
        ]
    )


def _frozen(mp: Path) -> bool:
    """Probe without timing: FIFREEZE on a frozen file system fails with EBUSY."""
    fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return True
            raise
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError as exc:  # the watchdog thawed our probe's freeze: thawed all the same
            if exc.errno != errno.EINVAL:
                raise
        return False
    finally:
        os.close(fd)


def test_clean_restart_continues_and_lost_events_or_reboot_force_resync(tmp: Path) -> None:
    (tmp / "d.img").write_bytes(b"")
    os.truncate(tmp / "d.img", 64 * MiB)
    with loop_device(tmp / "d.img") as dev:
        state = tmp / "state"
        state.mkdir()
        bd = resolve(dev)
        tr = DiskTracker(bd, state, buffer_kb=8)
        tr.start()
        try:
            assert tr.start_reason == "no saved tracking state"
            tr.begin(None, 0)
            _write(dev, 3)
            _, gen = tr.final_cut()
            _write(dev, 5)
            _write(dev, 9, count=2)
            session = tr.session
            tr.stop()
            _write(dev, 20)  # while no agent runs: the instance keeps recording

            tr = DiskTracker(bd, state, buffer_kb=8)
            tr.start()
            assert tr.start_reason is None and tr.session == session
            changed, why = tr.begin(session, gen)
            assert why is None and changed is not None
            assert changed.blocks() == [5, 9, 10, 20]
            tr.stop()

            # far more completions than an 8 KiB ring holds while stopped: lost, so resync
            _write(dev, 30, count=3000, bs=4096)
            tr = DiskTracker(bd, state, buffer_kb=8)
            tr.start()
            assert tr.start_reason == "write events were lost while the agent was stopped"
            changed, why = tr.begin(session, gen)
            assert changed is None and why == tr.start_reason
            _, gen = tr.final_cut()
            session = tr.session
            tr.stop()

            st = TrackState.load(state / f"{bd.name}.track")
            assert st is not None and st.clean
            st.boot_id = "another-boot"
            st.save(state / f"{bd.name}.track")
            tr = DiskTracker(bd, state, buffer_kb=8)
            tr.start()
            assert tr.start_reason == "the host rebooted since the last sync"
            assert tr.begin(session, gen)[0] is None
        finally:
            tr.release()


def test_killed_agent_leaves_no_frozen_file_system(tmp: Path) -> None:
    img = make_ext4(tmp / "fs.img", 32)
    with loop_device(img) as dev, mounted(dev, tmp / "mnt") as mp:
        code = (
            "import sys, time\n"
            "from openbdr.capture.linux.freeze import Freezer\n"
            "Freezer([sys.argv[1]], 600).__enter__()\n"
            "print('frozen', flush=True)\n"
            "time.sleep(600)\n"
        )
        child = subprocess.Popen([sys.executable, "-c", code, str(mp)], stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == b"frozen"
            assert _frozen(mp)
        finally:
            child.kill()
            child.wait()
        wait_for(lambda: not _frozen(mp), 60, "the watchdog to thaw")
        (mp / "written-after").write_text("ok")


def test_watchdog_thaws_at_its_deadline(tmp: Path) -> None:
    img = make_ext4(tmp / "fs.img", 32)
    with loop_device(img) as dev, mounted(dev, tmp / "mnt") as mp:
        with Freezer([str(mp)], timeout=1.0) as fz:
            assert _frozen(mp)
            wait_for(lambda: not _frozen(mp), 60, "the watchdog's deadline")
        assert fz.expired
        assert fz.window.seconds > 0
        (mp / "written-after").write_text("ok")
