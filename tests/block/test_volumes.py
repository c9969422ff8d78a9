"""The volume backend contract, on local raw files (undo journal), on real Ceph RBD and on
AWS EBS snapshots (the EBS direct APIs of the faithful fake)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.store.block.filevol import FileStore
from openbdr.store.block.volumes import VolumeError, VolumeStore

MiB = BLOCK_SIZE


def _blk(tag: int) -> bytes:
    return bytes([tag % 251 + 1]) * 1000 + os.urandom(MiB - 1000)


@pytest.mark.parametrize("backend_url", ["file", "rbd", "ebs"], indirect=True)
def test_snapshots_keep_their_content(store: VolumeStore) -> None:
    vol = store.open("host-a--sda", 8 * MiB)
    a = {i: _blk(i) for i in range(0, 8, 2)}
    for i, b in a.items():
        vol.write(i * MiB, b)
    vol.flush()
    vol.snapshot("p1")
    b2 = _blk(99)
    vol.write(2 * MiB, b2)
    vol.write_zeroes(4 * MiB, MiB)
    vol.write(5 * MiB, b2)
    vol.flush()
    vol.snapshot("p2")
    vol.resize(10 * MiB)
    vol.write(9 * MiB, b2)
    vol.write(0, b2)
    # p1: the first content, whatever came after it
    for i in range(8):
        want = a.get(i, bytes(MiB))
        assert vol.read_snapshot("p1", i * MiB, MiB) == want, i
    assert vol.read_snapshot("p2", 2 * MiB, MiB) == b2
    assert vol.read_snapshot("p2", 4 * MiB, MiB) == bytes(MiB)
    assert vol.read_snapshot("p2", 0, MiB) == a[0]
    assert vol.read_snapshot("p2", 7 * MiB, 4 * MiB) == bytes(MiB)  # short at its end
    assert [s.name for s in vol.snapshots()] == ["p1", "p2"]
    assert vol.snapshot("p2").size == 8 * MiB  # taken twice: the same snapshot
    # deleting the newer point keeps the older one whole, and the reverse
    vol.delete_snapshot("p2")
    for i in range(8):
        assert vol.read_snapshot("p1", i * MiB, MiB) == a.get(i, bytes(MiB)), i
    vol.flush()
    vol.snapshot("p3")
    vol.write(6 * MiB, _blk(7))
    vol.delete_snapshot("p1")
    assert vol.read_snapshot("p3", 0, MiB) == b2
    assert vol.read_snapshot("p3", 6 * MiB, MiB) == a[6]
    assert vol.read_snapshot("p3", 9 * MiB, MiB) == b2
    with pytest.raises(VolumeError):
        vol.read_snapshot("p1", 0, MiB)
    with pytest.raises(VolumeError):
        vol.write(10 * MiB, b"x")
    assert store.names() == ["host-a--sda"]
    store.delete("host-a--sda")
    assert store.names() == []


def test_file_volume_survives_a_torn_journal_and_reopen(tmp_path: Path) -> None:
    """A crash mid-append leaves a torn journal record: cut on open, snapshots intact."""
    store = FileStore(str(tmp_path))
    vol = store.open("v", 4 * MiB)
    first = [_blk(i) for i in range(4)]
    for i, b in enumerate(first):
        vol.write(i * MiB, b)
    vol.snapshot("p1")
    vol.write(MiB, _blk(50))
    store.close()
    journal = tmp_path / "v" / "undo-1.log"
    with open(journal, "ab") as f:
        f.write(b"OBUJ\0\0\0\0" + b"\x02" * 30)  # half a record: a kill during the append
    store = FileStore(str(tmp_path))
    vol = store.open("v")
    for i, b in enumerate(first):
        assert vol.read_snapshot("p1", i * MiB, MiB) == b
    vol.write(2 * MiB, _blk(51))
    assert vol.read_snapshot("p1", 2 * MiB, MiB) == first[2]
    # a snapshot whose state rename never happened does not exist; its journal is dropped
    (tmp_path / "v" / "undo-9.log").write_bytes(b"")
    store.close()
    vol = FileStore(str(tmp_path)).open("v")
    assert not (tmp_path / "v" / "undo-9.log").exists()
    assert [s.name for s in vol.snapshots()] == ["p1"]


def test_file_volume_concurrent_writers_after_a_snapshot(tmp_path: Path) -> None:
    """Many threads overwrite a snapshotted volume at once (the gateway does): every
    pre-image lands in the one journal, none is lost to a second journal object."""
    from concurrent.futures import ThreadPoolExecutor

    store = FileStore(str(tmp_path))
    vol = store.open("v", 32 * MiB)
    for i in range(32):
        vol.write(i * MiB, bytes([i + 1]) * MiB)
    vol.snapshot("p1")
    for i in range(0, 32, 2):
        vol.write(i * MiB, os.urandom(MiB))
    store.close()
    # a restarted gateway: the journal, long already, opens lazily under the first writers
    vol = FileStore(str(tmp_path)).open("v")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: vol.write(i * MiB, os.urandom(MiB)), range(32)))
    for i in range(32):
        assert vol.read_snapshot("p1", i * MiB, MiB) == bytes([i + 1]) * MiB, i
