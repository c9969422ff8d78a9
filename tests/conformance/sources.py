"""The source contract's conformance suite (`capture/base.py`), callable from the tests of
every source: the shapes it promises, and that a point equals what the snapshot showed.

The model: a full pass is the source's bytes inside `extents()` and zeros elsewhere; an
incremental is the previous point with the listed extents read again and `zero_extents()`
zeroed. Each round syncs through the real pipeline into an in-memory target and reads the
point back through its point reader.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from openbdr.blocks import BLOCK_SIZE
from openbdr.capture.base import ChangeToken, DiskSnapshot, Host, Snapshot
from openbdr.extents import Extent
from openbdr.store.memory import drop
from openbdr.store.target import init_target
from openbdr.sync import SyncOptions, sync

CONSISTENCY = {"application", "filesystem", "crash"}


def check_extents(extents: Iterable[Extent], size: int, what: str) -> list[Extent]:
    out = list(extents)
    end = 0
    for e in out:
        assert e.length > 0, f"{what}: empty extent {e}"
        assert e.offset >= end, f"{what}: not sorted and merged at {e}"
        assert e.offset + e.length <= size, f"{what}: {e} beyond the disk ({size})"
        end = e.offset + e.length
    return out


def check_disk(d: DiskSnapshot) -> tuple[list[Extent], list[Extent]]:
    assert isinstance(d.name, str) and d.name
    assert d.size > 0
    ext = check_extents(d.extents(), d.size, f"{d.name} extents")
    zeros = check_extents(d.zero_extents(), d.size, f"{d.name} zero extents")
    for z in zeros:
        assert not any(e.offset < z.end and z.offset < e.end for e in ext), (
            f"{d.name}: zero extent {z} overlaps a changed one"
        )
    if d.valid_bytes is not None:
        assert 0 <= d.valid_bytes <= d.size
    assert d.trust_sample >= 0
    assert json.loads(json.dumps(d.fingerprint())) == d.fingerprint()
    assert d.fingerprint() == d.fingerprint(), "the fingerprint of one frozen view is stable"
    assert d.moved_blocks([0, 1]) <= {0, 1}
    buf = bytearray(4096)
    assert d.read_into(d.size, buf) == 0, "nothing is read beyond the end of the disk"
    tail = min(4096, d.size)
    assert d.read_into(d.size - tail, memoryview(buf)[:tail]) == tail
    if d.layout is not None:
        json.dumps(d.layout)
    return ext, zeros


class _Recording(Host):
    """The host as the sync sees it, noting what each snapshot promised."""

    def __init__(self, inner: Host, model: dict[str, bytearray]) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = model
        self.rounds: list[dict[str, Any]] = []

    def describe(self) -> str:
        return self.inner.describe()

    def snapshot(self, since: ChangeToken | None) -> Snapshot:
        snap = self.inner.snapshot(since)
        assert snap.consistency in CONSISTENCY
        names = [d.name for d in snap.disks]
        assert names and len(set(names)) == len(names)
        info: dict[str, Any] = {}
        for d in snap.disks:
            ext, zeros = check_disk(d)
            info[d.name] = {"incremental": d.incremental, "reason": d.fallback_reason}
            old = self.model.get(d.name)
            base = bytearray(d.size)
            if d.incremental and old is not None:
                base[: min(len(old), d.size)] = old[: d.size]
            for z in zeros:
                base[z.offset : z.end] = bytes(z.length)
            for e in ext:
                view = memoryview(base)[e.offset : e.end]
                assert d.read_into(e.offset, view) == e.length
            if since is not None and not d.incremental and old is not None:
                assert d.fallback_reason, f"{d.name}: a pass that is not incremental says why"
            self.model[d.name] = base
        json.dumps(ChangeToken("x", {d.name: d.token.to_json() for d in snap.disks}).to_json())
        self.rounds.append(info)
        return snap


def check_source(host: Host, change: Callable[[int], None], rounds: int = 3) -> list[Any]:
    """Sync `rounds` times (calling `change(round)` before each but the first) and check
    every point against the model; returns what each round's disks said."""
    assert isinstance(host.describe(), str)
    model: dict[str, bytearray] = {}
    rec = _Recording(host, model)
    url = f"memory://{uuid.uuid4().hex}"
    target = init_target(url)
    try:
        for r in range(rounds):
            if r:
                change(r)
            point = sync(target, rec, SyncOptions(threads=2))
            assert {d.name for d in point.disks} == set(model)
            for disk in point.disks:
                reader = target.reader(point, disk)
                got = bytearray(disk.size)
                for i in range(0, (disk.size + BLOCK_SIZE - 1) // BLOCK_SIZE):
                    blk = reader.read_block(i)
                    got[i * BLOCK_SIZE : i * BLOCK_SIZE + len(blk)] = blk
                want = model[disk.name]
                assert got == want, f"round {r} disk {disk.name}: the point is not the snapshot"
    finally:
        target.close()
        drop(url)
    return rec.rounds
