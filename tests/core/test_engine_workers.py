"""The engine's worker threads: an error in one stops the sync with that error, after the
blocks already in flight are recorded; no worker outlives the sync; a second run resumes
from the checkpoint and the point restores byte for byte."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from openbdr.capture.image import open_host
from openbdr.store.objects.target import ObjectDiskWriter
from openbdr.store.target import init_target, open_target
from openbdr.sync import SyncOptions, sync

from ..helpers import openbdr, sha256

MIB = 1 << 20
BLOCKS = 48
FAIL_AT = 30


def _sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sync-")]


def test_a_failing_put_stops_the_sync_and_the_next_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "disk.img"
    rng = random.Random(16)
    image.write_bytes(b"".join(rng.randbytes(MIB) for _ in range(BLOCKS)))
    url = str(tmp_path / "repo")
    init_target(url)
    put = ObjectDiskWriter.put

    def failing(self: ObjectDiskWriter, i: int, block: memoryview, cid: bytes) -> tuple:
        if i == FAIL_AT:
            raise OSError(28, "No space left on device")
        return put(self, i, block, cid)

    monkeypatch.setattr(ObjectDiskWriter, "put", failing)
    with pytest.raises(OSError, match="No space left"):
        sync(open_target(url), open_host("h", [str(image)], valid_only=False),
             SyncOptions(threads=3))
    assert not _sync_threads()  # the workers were stopped and joined

    monkeypatch.setattr(ObjectDiskWriter, "put", put)
    point = sync(open_target(url), open_host("h", [str(image)], valid_only=False),
                 SyncOptions(threads=3))
    disk = point.disks[0]
    # resumed: the blocks recorded before the failure were not read again
    assert 0 < disk.read_bytes < BLOCKS * MIB
    assert not _sync_threads()
    out = tmp_path / "restored.img"
    openbdr("restore", "-r", url, "-H", "h", "--to", str(out))
    assert sha256(out) == sha256(image)
