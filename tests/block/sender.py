"""`python -m tests.block.sender URL HOST IMAGE…`: one sync by the direct driver, in a
process of its own so that a test can SIGKILL it mid-sync."""

from __future__ import annotations

import sys
from pathlib import Path

from openbdr.chunk import Codec
from openbdr.store.block.target import BlockTarget
from openbdr.store.target import WriteOptions

from .driver import drive

if __name__ == "__main__":
    url, host, *images = sys.argv[1:]
    p = drive(
        BlockTarget(url),
        host,
        [Path(i) for i in images],
        WriteOptions(compression=Codec.ZSTD),
        checkpoint_every=4,
        on_block=lambda n: print(n, flush=True),  # the test kills at a block count
    )
    print("committed", p.id, flush=True)
