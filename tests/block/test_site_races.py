"""The gateway's record of what a block holds stays true when two requests write the same
block at once (a killed sender's late put beside its successor's): the commit trusts it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from openbdr.blocks import BLOCK_SIZE
from openbdr.chunk import ChunkCodec
from openbdr.gateway.site import Site
from openbdr.store.block.wire import frame_parts


def test_two_writers_of_one_block_leave_a_true_record(tmp_path: Path) -> None:
    site = Site(tmp_path / "gw", f"file://{tmp_path / 'volumes'}")
    codec = ChunkCodec(site.hash_key)
    site.begin("r1", "lease", None)
    site.open_disk("r1", "lease", 0, "sda", 2 * BLOCK_SIZE)
    vs = next(iter(site._vols.values()))
    wrong = 0
    for _ in range(150):
        frames = []
        for _ in range(2):
            block = os.urandom(BLOCK_SIZE)
            cid = codec.chunk_id(block)
            frames.append(b"".join(frame_parts(0, 1, cid, codec.encode(block, cid).data)))
        go = threading.Barrier(2)

        def put(frame: bytes, go: threading.Barrier = go) -> None:
            go.wait()
            site.put_blocks("r1", "lease", frame)

        threads = [threading.Thread(target=put, args=(f,)) for f in frames]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wrong += vs.have(1) != codec.chunk_id(vs.vol.read(BLOCK_SIZE, BLOCK_SIZE))
    site.close()
    assert wrong == 0
