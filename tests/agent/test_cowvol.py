"""Copy-on-write volumes: point-in-time snapshots and exact changed-block lists.

The store is tested directly; the volume through its real FUSE daemon with a loop device
on it, an ext4 written to while syncs run, restores compared with copies of the device
taken by the test while the file system was frozen (the frozen hook)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.capture.linux import cowvol
from openbdr.capture.linux.cowstore import CowStore
from openbdr.extents import Extent, to_blocks
from openbdr.restore import restore_disk
from openbdr.store.target import Target, init_target
from openbdr.sync import SyncOptions, disk_capture, sync
from openbdr.volume import FileReader, analyze

from ..conformance.sources import check_source
from ..helpers import mounted
from .tracing import WriteCounter

MiB = 1 << 20


# -- the store ------------------------------------------------------------------------
def test_store_snapshot_is_frozen_and_changes_are_exact(tmp_path: Path) -> None:
    st = CowStore.create(tmp_path / "v", 16 * MiB)
    st.write(0, b"a" * MiB)
    st.write(5 * MiB + 10, b"b" * 100)
    f1, changed, why = st.snapshot(None)
    assert changed is None and why is None
    tok = {"session": st.track.session, "gen": f1.gen}
    # after the snapshot: a partial write into a frozen block, a whole new block, a discard
    st.write(5 * MiB + 20, b"c" * 10)
    st.write(9 * MiB, b"d" * MiB)
    st.discard(0, MiB)
    assert st.read_frozen(f1, 0, MiB) == b"a" * MiB
    assert st.read_frozen(f1, 5 * MiB, 200) == bytes(10) + b"b" * 100 + bytes(90)
    assert st.read_frozen(f1, 9 * MiB, 10) == bytes(10)
    assert st.read(5 * MiB, 200) == bytes(10) + b"b" * 10 + b"c" * 10 + b"b" * 80 + bytes(90)
    assert st.read(0, 4) == bytes(4)
    f2, changed, why = st.snapshot(tok)
    assert changed is not None and changed.blocks() == [0, 5, 9], why
    # releasing the first snapshot frees the slots only it held (after the next flush)
    slots = st.high
    st.release(f1.id)
    st.flush()
    assert len(st.free) == 2  # old block 0 and old block 5
    st.write(12 * MiB, b"e" * 10)
    assert st.high == slots  # a freed slot was reused ...
    assert st.read(12 * MiB, 12) == b"e" * 10 + bytes(2)  # ... with its old bytes gone
    st.release(f2.id)
    st.close()
    # a clean stop continues the session; an unclean one starts a new session
    again = CowStore(tmp_path / "v")
    assert again.track.session == tok["session"] and again.start_reason is None
    assert again.read(9 * MiB, 2) == b"dd"
    f3, changed, _ = again.snapshot({"session": tok["session"], "gen": f2.gen})
    assert changed is not None and changed.blocks() == [12]
    os.close(again.data_fd)
    os.close(again.map_fd)  # dropped without close(): as if killed
    crashed = CowStore(tmp_path / "v")
    assert crashed.start_reason == "the volume did not stop cleanly"
    _, changed, why = crashed.snapshot({"session": tok["session"], "gen": f3.gen})
    assert changed is None and why
    crashed.close()


# -- the volume on a loop device ------------------------------------------------------
@pytest.fixture
def volume(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "vol"
    cowvol.create(root, 256 * MiB)
    info = cowvol.attach(root)
    try:
        yield root, info["loop"]
    finally:
        subprocess.run(["umount", str(tmp_path / "mnt")], capture_output=True, check=False)
        try:
            cowvol.detach(root)
        except Exception:
            subprocess.run(["losetup", "-d", info["loop"]], check=False)
            subprocess.run(["umount", "-l", info["mountpoint"]], check=False)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(info["pid"]), signal.SIGKILL)
            raise


def _blocks_differing(a: Path, b: Path) -> set[int]:
    out = set()
    with open(a, "rb") as fa, open(b, "rb") as fb:
        i = 0
        while True:
            x, y = fa.read(BLOCK_SIZE), fb.read(BLOCK_SIZE)
            if not x and not y:
                return out
            if x != y:
                out.add(i)
            i += 1


def _same_on(a: Path, b: Path, blocks: set[int]) -> list[int]:
    bad = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for i in sorted(blocks):
            fa.seek(i * BLOCK_SIZE)
            fb.seek(i * BLOCK_SIZE)
            if fa.read(BLOCK_SIZE) != fb.read(BLOCK_SIZE):
                bad.append(i)
    return bad


@pytest.mark.root
def test_raw_volume_lists_exactly_the_written_blocks(
    volume: tuple[Path, str], tmp_path: Path
) -> None:
    root, dev = volume
    repo = init_target(str(tmp_path / "repo"))
    host = cowvol.CowVolHost("raw", [cowvol.VolumeSpec("disk0", root)])

    def write(offset: int, data: bytes) -> None:
        fd = os.open(dev, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    write(3 * MiB, os.urandom(2 * MiB))
    write(200 * MiB + 4096, os.urandom(8192))
    p1 = sync(repo, host, SyncOptions())
    assert p1.disks[0].mode == "full" and p1.disks[0].read_bytes == 3 * MiB  # mapped only
    expected = [[7], [0, 100, 101, 255], [3]]
    for blocks in expected:
        for b in blocks:
            write(b * MiB + (MiB - 512 if b == 100 else 0), os.urandom(1024 if b == 100 else 4096))
        with host.snapshot(p1_token(repo)) as snap:
            d = snap.disks[0]
            assert d.incremental
            assert list(to_blocks(list(d.extents()), d.size)) == blocks
        p = sync(repo, host, SyncOptions())
        assert p.disks[0].mode == "incremental"
        assert p.disks[0].read_bytes == len(blocks) * MiB
        out = tmp_path / "restored.img"
        out.unlink(missing_ok=True)
        restore_disk(repo, p, p.disks[0], out)
        subprocess.run(["cmp", str(out), dev], check=True)  # byte-identical, whole volume


def p1_token(repo: Target):  # type: ignore[no-untyped-def]
    from openbdr.capture.base import ChangeToken

    latest = repo.latest("raw")
    assert latest is not None
    return ChangeToken.from_json(latest.token)


class Recording(cowvol.CowVolHost):
    """Keeps the blocks each snapshot listed."""

    listed: list[set[int]]

    def snapshot(self, since):  # type: ignore[no-untyped-def]
        snap = super().snapshot(since)
        d = snap.vols[0]
        self.__dict__.setdefault("listed", []).append(set(to_blocks(d.first_pass, d.size)))
        return snap


@pytest.mark.root
@pytest.mark.slow
def test_live_ext4_points_are_the_snapshot_instant(
    volume: tuple[Path, str], tmp_path: Path
) -> None:
    root, dev = volume
    subprocess.run(["mkfs.ext4", "-q", "-E", "nodiscard", dev], check=True)
    repo = init_target(str(tmp_path / "repo"))
    refs = tmp_path / "refs"
    refs.mkdir()
    # the test's copy of the device while frozen: what the point must hold
    hook = f'n=$(ls {refs} | wc -l); dd if="$OPENBDR_DEVICES" of={refs}/ref$n bs=1M iflag=direct status=none'
    host = Recording("live", [cowvol.VolumeSpec("disk0", root)], 20, hook)
    counter = WriteCounter(dev)
    stop = threading.Event()
    with mounted(dev, tmp_path / "mnt") as mnt:

        def writer() -> None:
            i = 0
            while not stop.is_set():
                p = mnt / f"f{i % 40}"
                with open(p, "wb") as f:
                    f.write(os.urandom(256 * 1024 + (i % 7) * 4096))
                    if i % 3 == 0:
                        os.fsync(f.fileno())
                if i % 11 == 0:
                    (mnt / f"f{(i + 20) % 40}").unlink(missing_ok=True)
                i += 1

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            counter.take()
            points = []
            traced: list[set[int]] = []
            for _ in range(3):
                stop.wait(1.0)
                points.append(sync(repo, host, SyncOptions()))
                traced.append(counter.take())
        finally:
            stop.set()
            t.join(30)
            counter.close()
    freezes = [disk_capture(p.token, "disk0")["freezes"] for p in points]
    assert all(len(f) == 1 for f in freezes)
    assert [p.disks[0].mode for p in points] == ["full", "incremental", "incremental"]
    # the mounted file system of the full pass was mapped by the kernel under the freeze
    layout = points[0].disks[0].layout or {}
    assert (layout.get("filesystem") or {}).get("mapped_by") == "kernel", layout
    assert points[0].disks[0].fallback_reason is None
    prev_ref: Path | None = None
    for i, p in enumerate(points):
        ref = refs / f"ref{i}"
        out = tmp_path / f"r{i}.img"
        restore_disk(repo, p, p.disks[0], out)
        valid = {
            b
            for e in analyze(FileReader(str(ref))).valid_extents
            for b in to_blocks([Extent(e.offset, e.length)], ref.stat().st_size)
        }
        assert valid
        assert _same_on(out, ref, valid) == []  # every allocated block as frozen
        fsck = subprocess.run(["fsck.ext4", "-fn", str(out)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout
        if prev_ref is not None:
            changed = _blocks_differing(prev_ref, ref)
            listed = host.listed[i]
            # exact: every block that differs is listed; nothing listed was not written
            assert changed <= listed, sorted(changed - listed)
            assert listed <= traced[i - 1] | traced[i], sorted(listed - traced[i - 1] - traced[i])
            assert _same_on(out, ref, listed) == []
        prev_ref = ref



@pytest.mark.root
def test_cow_volume_passes_the_source_conformance_suite(
    volume: tuple[Path, str], tmp_path: Path
) -> None:
    """A COW volume is frozen and lists exact changes: each point equals its snapshot."""
    root, dev = volume
    host = cowvol.CowVolHost("conf", [cowvol.VolumeSpec("disk0", root)])
    rng = random.Random(3)

    def change(r: int) -> None:
        fd = os.open(dev, os.O_WRONLY)
        try:
            os.pwrite(fd, rng.randbytes(3000), r * 7 * MiB + 512)  # less than a block
            os.pwrite(fd, rng.randbytes(2 * MiB), 100 * MiB + r * MiB)
            os.fsync(fd)
        finally:
            os.close(fd)

    change(0)
    rounds = check_source(host, change, rounds=3)
    assert all(d["incremental"] for info in rounds[1:] for d in info.values())
