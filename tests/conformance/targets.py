"""The target contract's conformance suite (`store/target.py`), run against every target:
sessions, resume, incrementals on a parent, point readers, leases, retention and gc."""

from __future__ import annotations

import random
from typing import Any

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.chunk import ZERO_ID
from openbdr.errors import LockedError
from openbdr.store.manifest import RestorePoint, new_point_id
from openbdr.store.target import DiskWriter, SyncSession, Target, WriteOptions

SIZE = 5 * BLOCK_SIZE + 4096  # an odd size: the last block is short


def _blocks(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    spans = [BLOCK_SIZE] * 5 + [4096]
    out = [rng.randbytes(n) for n in spans]
    out[2] = bytes(BLOCK_SIZE)  # a zero block
    out[4] = out[0]  # the same content twice
    return out


def _write(session: SyncSession, w: DiskWriter, blocks: dict[int, bytes]) -> list[str]:
    kinds = []
    for i, data in blocks.items():
        if data == bytes(len(data)):
            w.done(i, ZERO_ID)
            kinds.append("zero")
            continue
        cid = session.chunk_id(memoryview(data))
        kind, stored = w.put(i, memoryview(data), cid)
        assert kind in ("known", "stored") and (stored > 0) == (kind == "stored")
        w.done(i, cid)
        kinds.append(kind)
    return kinds


def _commit(session: SyncSession, host: str, writers: list[DiskWriter]) -> RestorePoint:
    latest = session.latest
    point = RestorePoint(
        host=host,
        id=new_point_id(after=latest.id if latest else None),
        created="2026-12-07T00:00:00+00:00",
        consistency="crash",
        disks=[w.record for w in writers],
        parent=session.parent.id if session.parent else None,
    )
    return session.commit(point)


def _read_all(target: Target, point: RestorePoint) -> bytes:
    reader = target.reader(point, point.disks[0])
    try:
        got = bytearray(reader.size)
        allocated = set(reader.allocated())
        for i, data in reader.read_blocks(range((reader.size + BLOCK_SIZE - 1) // BLOCK_SIZE)):
            if i not in allocated:
                assert data == bytes(len(data))
            got[i * BLOCK_SIZE : i * BLOCK_SIZE + len(data)] = data
        return bytes(got)
    finally:
        reader.close()


def check_target(target: Target, host: str = "conf1") -> dict[str, Any]:
    fp = {"name": "d0", "size": SIZE, "gen": 1}
    assert target.latest(host) is None and target.points(host) == []
    first = _blocks(1)
    # a session that is abandoned after a checkpoint: the next one resumes from it
    with target.begin(host, WriteOptions()) as s:
        assert s.latest is None and s.parent is None
        w = s.disk(0, "d0", SIZE, fp, "full")
        _write(s, w, {0: first[0], 1: first[1]})
        s.checkpoint({"point": "abandoned"})
        with pytest.raises(LockedError):  # one sync per host at a time
            target.begin(host, WriteOptions()).__enter__()
    assert target.points(host) == [], "no point exists before a commit"
    with target.begin(host, WriteOptions()) as s:
        w = s.disk(0, "d0", SIZE, fp, "full")
        assert w.is_done(0) and w.is_done(1), "a resumed sync skips what was checkpointed"
        assert not w.is_done(3)
        _write(s, w, {i: first[i] for i in range(2, 6)})
        p1 = _commit(s, host, [w])
    assert [p.id for p in target.points(host)] == [p1.id]
    assert target.latest(host).id == p1.id  # type: ignore[union-attr]
    assert _read_all(target, p1) == b"".join(first)

    # an incremental on that parent: unchanged content costs nothing
    second = list(first)
    second[1] = random.Random(2).randbytes(BLOCK_SIZE)
    with target.begin(host, WriteOptions()) as s:
        assert s.parent is not None and s.parent.id == p1.id
        w = s.disk(0, "d0", SIZE, {**fp, "gen": 2}, "incremental")
        assert w.previous(0) == s.chunk_id(memoryview(first[0]))
        assert set(w.previous_blocks()) == {0, 1, 3, 4, 5}
        kinds = _write(s, w, {1: second[1], 3: second[3]})
        assert kinds[1] == "known"
        p2 = _commit(s, host, [w])
    assert _read_all(target, p2) == b"".join(second)
    assert _read_all(target, p1) == b"".join(first), "an earlier point is untouched"

    # retention and gc: the forgotten point goes, the kept one still reads back
    target.protect(host, p2.id, True)
    assert target.point(host, "latest").protected
    target.forget([p1, p2])  # p2 was protected meanwhile: it stays
    assert [p.id for p in target.points(host)] == [p2.id]
    report = target.gc(margin=0.0)
    assert report.deleted >= 1, report
    assert _read_all(target, p2) == b"".join(second)
    assert target.verify(host, deep=True).ok
    p2.drill = {"id": "d1", "verdict": "passed"}
    target.update_point(p2)
    assert target.point(host, p2.id).drill == {"id": "d1", "verdict": "passed"}
    return {"p1": p1, "p2": p2, "gc": report}
