"""The bootable fixture through a gateway: full + incremental points read back identical,
and a VM boots an older point straight from its snapshot (RBD: QEMU reads the snapshot
natively under a throwaway overlay; local files: NBD over the point reader; no copy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.chunk import Codec
from openbdr.drill.accel import choose_accel
from openbdr.drill.image import CowImage
from openbdr.drill.nbd import NbdServer
from openbdr.drill.vm import DirectDrive, Vm, VmConfig, direct_drives
from openbdr.store.block.target import BlockTarget
from openbdr.store.target import PointReader, WriteOptions

from ..helpers import SHARED
from .conftest import GatewayProc
from .driver import drive, read_back

pytestmark = [pytest.mark.root, pytest.mark.slow]

MAKE_DISK = SHARED / "fixtures" / "make-bootable-disk"


def _bootable(path: Path, marker: str) -> Path:
    proc = subprocess.run(
        [str(MAKE_DISK), str(path), "--size", "512M", "--marker", marker],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


class ReaderImage:
    """A point reader as the NBD server's image (what drill/image.py does over the contract)."""

    writable = False

    def __init__(self, reader: PointReader) -> None:
        self.reader = reader
        self.size = reader.size
        self._cache: dict[int, bytes] = {}

    def pread(self, offset: int, length: int) -> bytes:
        out = bytearray()
        end = min(self.size, offset + length)
        while offset < end:
            i = offset // BLOCK_SIZE
            if i not in self._cache:
                if len(self._cache) > 16:
                    self._cache.clear()
                self._cache[i] = self.reader.read_block(i)
            start = offset - i * BLOCK_SIZE
            piece = self._cache[i][start : start + end - offset]
            out += piece
            offset += len(piece)
        return bytes(out)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        raise OSError("read-only")

    def write_zeroes(self, offset: int, length: int) -> None:
        raise OSError("read-only")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.reader.close()


def test_bootable_points_boot_from_their_snapshot(
    gateway: GatewayProc, backend_url: str, tmp_path: Path
) -> None:
    img = _bootable(tmp_path / "boot.img", "block-one")
    target = BlockTarget(gateway.url)
    p1 = drive(target, "vm1", [img], WriteOptions(compression=Codec.ZSTD))
    first = img.read_bytes()
    _bootable(tmp_path / "next.img", "block-two")
    shutil.copyfile(tmp_path / "next.img", img)
    p2 = drive(target, "vm1", [img], WriteOptions(compression=Codec.ZSTD))
    assert 0 < p2.disks[0].written_bytes < p1.disks[0].written_bytes
    assert read_back(target, p1) == first
    assert read_back(target, p2) == img.read_bytes()

    # the drill boots the OLDER point while the volume holds the newer one
    reader = target.reader(p1, p1.disks[0])
    direct = direct_drives([reader])
    work = tmp_path / "vm"
    work.mkdir()
    drives: list[str | DirectDrive]
    if backend_url.startswith("rbd://"):
        assert direct is not None and direct[0].source["snapshot"] == p1.id
        drives = list(direct)
        server = None
    else:
        assert direct is None  # raw + undo journal: served over NBD from the snapshot
        server = NbdServer({"d0": CowImage(ReaderImage(reader), str(tmp_path))}).start()
        drives = [server.uri("d0")]
    try:
        # TCG: KVM here is nested and its probe guest passes where the kernel then fails
        with Vm(VmConfig(drives, choose_accel(force="tcg")), work) as vm:
            assert vm.wait_console("OPENBDR-GUEST-READY", 300), vm.console_text()[-2000:]
            assert "marker=block-one" in vm.console_text()
    finally:
        if server is not None:
            server.stop()
    assert not list(work.glob("overlay-*"))  # the overlay is thrown away
    assert read_back(target, p1) == first  # the guest's writes never reached the point
