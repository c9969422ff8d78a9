"""A direct driver of the target contract: what a sync does, without sync.py.

begin → disk → put/done from several threads → checkpoint → lost → commit; used to prove
the block target before (and besides) the pipeline that drives it in production.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from openbdr.blocks import BLOCK_SIZE, block_count, block_span, is_zero
from openbdr.chunk import ZERO_ID
from openbdr.store.manifest import RestorePoint, new_point_id
from openbdr.store.target import DiskWriter, SyncSession, Target, WriteOptions


def _send(s: SyncSession, w: DiskWriter, fd: int, i: int, size: int) -> tuple[int, bytes, str]:
    data = os.pread(fd, block_span(i, size), i * BLOCK_SIZE)
    if is_zero(data):
        return i, ZERO_ID, "zero"
    view = memoryview(data)
    cid = s.chunk_id(view)
    kind, _n = w.put(i, view, cid)
    return i, cid, kind


def drive(
    target: Target,
    host: str,
    images: list[Path],
    options: WriteOptions | None = None,
    *,
    checkpoint_every: int = 16,
    on_block: Callable[[int], None] | None = None,
) -> RestorePoint:
    """Sync the images (one disk each) as one point; hash-compare against the parent."""
    options = options or WriteOptions()
    with target.begin(host, options) as s:
        parent = s.parent
        writers = []
        fds = []
        count = 0
        for no, img in enumerate(images):
            size = img.stat().st_size
            st = img.stat()
            fp = {"path": str(img), "size": size, "mtime": st.st_mtime_ns}
            had = parent is not None and any(d.name == img.name for d in parent.disks)
            w = s.disk(no, img.name, size, fp, "hash-compare" if had else "full")
            fd = os.open(img, os.O_RDONLY)
            fds.append(fd)
            writers.append(w)
            todo = [i for i in range(block_count(size)) if not w.is_done(i)]
            with ThreadPoolExecutor(4) as pool:
                for i, cid, _kind in pool.map(
                    lambda b, w=w, fd=fd, n=size: _send(s, w, fd, b, n), todo
                ):
                    w.done(i, cid)
                    count += 1
                    if on_block is not None:
                        on_block(count)
                    if count % checkpoint_every == 0:
                        s.checkpoint({"blocks": count})
        s.checkpoint({"blocks": count})
        for no, blocks in s.lost().items():
            w = writers[no]
            w.undo(blocks)
            size = images[no].stat().st_size
            for b in blocks:
                i, cid, _ = _send(s, w, fds[no], b, size)
                w.done(i, cid)
        for fd in fds:
            os.close(fd)
        latest = s.latest
        point = RestorePoint(
            host=host,
            id=new_point_id(after=latest.id if latest else None),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            consistency="crash",
            disks=[w.record for w in writers],
            parent=parent.id if parent else None,
            codec=options.compression.name.lower(),
        )
        return s.commit(point)


def read_back(target: Target, point: RestorePoint, no: int = 0) -> bytes:
    """A point's disk, whole, through the point reader."""
    d = point.disks[no]
    r = target.reader(point, d)
    out = bytearray(d.size)
    for i, data in r.read_blocks(range(block_count(d.size))):
        out[i * BLOCK_SIZE : i * BLOCK_SIZE + len(data)] = data
    r.close()
    return bytes(out)
