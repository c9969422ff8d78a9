"""Linux swap: only the header page matters; the rest is scratch space.

Unless a hibernation image is stored in it: then its signature replaces SWAPSPACE2 and the
whole area is data a resume needs.
"""

from __future__ import annotations

import struct

from ..extents import Extent
from .model import Damaged, FilesystemInfo
from .reader import BlockReader, read_at

KIND = "swap"
PAGE_SIZES = (4096, 8192, 16384, 65536)
SWAP_SIGS = (b"SWAPSPACE2", b"SWAP-SPACE")
HIBERNATE_SIGS = (b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001")


def _signature(reader: BlockReader) -> tuple[int, bytes] | None:
    for ps in PAGE_SIZES:
        sig = read_at(reader, ps - 10, 10)
        if sig in SWAP_SIGS or any(sig.startswith(h) for h in HIBERNATE_SIGS):
            return ps, sig
    return None


def detect(reader: BlockReader) -> bool:
    return _signature(reader) is not None


def analyze(reader: BlockReader, base: int) -> FilesystemInfo:
    found = _signature(reader)
    if found is None:
        raise Damaged("swap signature vanished")
    page, sig = found
    if sig not in SWAP_SIGS:
        raise Damaged("holds a hibernation image")
    head = read_at(reader, 1024, 44)
    label = uuid = None
    total = reader.size
    if sig == b"SWAPSPACE2" and len(head) == 44:
        last_page = struct.unpack_from("<I", head, 4)[0]
        if last_page == 0 or (last_page + 1) * page > reader.size:
            raise Damaged("swap header claims more pages than the volume holds")
        total = (last_page + 1) * page
        raw = head[12:28].hex()
        uuid = f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
        label = head[28:44].split(b"\0", 1)[0].decode("utf-8", "replace") or None
    return FilesystemInfo(
        kind=KIND,
        total_bytes=total,
        used_extents=[Extent(base, page)],
        block_size=page,
        label=label,
        uuid=uuid,
    )
