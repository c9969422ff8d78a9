"""The NBD reader's read-ahead against a real `qemu-nbd`: views stay valid while held,
request buffers are reused once they are not, and every byte comes back where it was."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.capture.agentless import DiskPlan
from openbdr.capture.libvirt import nbdread
from openbdr.capture.libvirt.nbdread import NbdDisk, connect_image
from openbdr.extents import Extent

MIB = BLOCK_SIZE
BLOCKS = 40


def pattern(i: int) -> bytes:
    """Block `i`'s bytes: its number everywhere, so a block read from the wrong place
    or from a reused buffer shows."""
    return i.to_bytes(4, "little") * (MIB // 4)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        for i in range(BLOCKS):
            f.write(pattern(i))
    out = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out)], check=True)
    return out


def disk(image: Path, connections: int, in_flight: int) -> NbdDisk:
    plan = DiskPlan("vdb", BLOCKS * MIB, False)
    return NbdDisk(
        "libvirt",
        plan,
        None,
        connect_image(str(image), "qcow2"),
        None,
        in_flight,
        connections=connections,
    )


def test_held_views_keep_their_bytes_while_the_reader_moves_on(image: Path) -> None:
    d = disk(image, connections=2, in_flight=1)
    try:
        # an extent ending mid-request and one starting mid-block: short requests too
        d.plan_reads([Extent(0, 13 * MIB), Extent(14 * MIB + 4096, 26 * MIB - 4096)])
        held = [d.view(i * MIB, MIB) for i in range(13)]
        assert all(v is not None for v in held)
        small = bytearray(MIB - 4096)
        assert d.read_into(14 * MIB + 4096, small) == MIB - 4096
        assert bytes(small) == pattern(14)[4096:]
        later = [d.view(i * MIB, MIB) for i in range(15, BLOCKS)]
        for i, v in enumerate(held):  # read long before the reader moved past them
            assert v is not None and bytes(v) == pattern(i), i
        for i, v in enumerate(later, start=15):
            assert v is not None and bytes(v) == pattern(i), i
        # a block read before: read again directly, same bytes
        again = bytearray(MIB)
        assert d.read_into(3 * MIB, again) == MIB and bytes(again) == pattern(3)
    finally:
        d.close()


def test_request_buffers_are_reused_once_no_view_holds_them(image: Path) -> None:
    made = len(nbdread.PINNED._free)
    d = disk(image, connections=1, in_flight=2)
    try:
        d.plan_reads([Extent(0, BLOCKS * MIB)])
        for i in range(BLOCKS):
            v = d.view(i * MIB, MIB)
            assert v is not None and bytes(v[:8]) == pattern(i)[:8]
            del v
    finally:
        d.close()
    # 10 requests of 4 MiB through a window of 2: a handful of buffers, not one each
    assert len(nbdread.PINNED._free) - made <= 4
