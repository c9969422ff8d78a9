"""Instant access: restore points served over NBD, read by real clients (qemu-img, libnbd)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from openbdr.drill.export import serve_point
from openbdr.drill.image import CowImage, PointImage
from openbdr.store.target import open_target

from ..helpers import openbdr, run, sha256

nbd = pytest.importorskip("nbd", reason="python3-libnbd is not installed")


def test_qemu_img_reads_the_exact_image_over_unix_socket(
    small_repo: tuple[str, Path], tmp_path: Path
) -> None:
    url, img = small_repo
    repo = open_target(url)
    point = repo.point("h1", "latest")
    sock = tmp_path / "nbd.sock"
    with serve_point(repo, point, unix_path=str(sock)) as exports:
        uri = exports[0].uri
        info = run(["qemu-img", "info", "--output=json", uri]).stdout
        assert f'"virtual-size": {img.stat().st_size}' in info
        out = tmp_path / "copy.img"
        run(["qemu-img", "convert", "-O", "raw", uri, str(out)])
        assert sha256(out) == sha256(img)
        proc = subprocess.run(
            ["qemu-io", "-f", "raw", "-c", "write -P 0xab 0 4096", uri],
            capture_output=True,
            text=True,
        )
        assert proc.returncode != 0 or "failed" in (proc.stdout + proc.stderr).lower()
    assert not sock.exists()
    assert sha256(out) == sha256(img)


def test_libnbd_random_reads_over_tcp(small_repo: tuple[str, Path]) -> None:
    url, img = small_repo
    repo = open_target(url)
    point = repo.point("h1", "latest")
    data = img.read_bytes()
    with serve_point(repo, point) as exports:
        h = nbd.NBD()
        h.connect_uri(exports[0].uri)
        try:
            assert h.get_size() == len(data)
            assert h.is_read_only()
            for off, n in [
                (0, 512),
                (1048000, 3000),
                (5 << 20, 1 << 20),
                (len(data) - 7000, 7000),
                (3 << 20, 4 << 20),
                (123, 1),
            ]:
                assert h.pread(n, off) == data[off : off + n], (off, n)
            with pytest.raises(nbd.Error):
                h.pwrite(b"x" * 512, 0)
        finally:
            h.shutdown()


def test_overlay_takes_writes_and_the_point_stays_intact(
    small_repo: tuple[str, Path], tmp_path: Path
) -> None:
    url, img = small_repo
    repo = open_target(url)
    point = repo.point("h1", "latest")
    data = img.read_bytes()
    with serve_point(repo, point, overlay=True) as exports:
        h = nbd.NBD()
        h.connect_uri(exports[0].uri)
        try:
            assert not h.is_read_only()
            h.pwrite(b"\x11" * 100, 4000)  # straddles a grain: partial copy-up on both sides
            h.pwrite(b"\x22" * (2 << 20), 6 << 20)
            h.zero(8192, 12 << 20)
            want = bytearray(data)
            want[4000:4100] = b"\x11" * 100
            want[6 << 20 : 8 << 20] = b"\x22" * (2 << 20)
            want[12 << 20 : (12 << 20) + 8192] = bytes(8192)
            assert h.pread(len(data), 0) == bytes(want)
        finally:
            h.shutdown()
        uri = exports[0].uri
        # a second client sees the same overlay (one throwaway disk per drill)
        assert (
            "pattern verification failed"
            not in run(["qemu-io", "-f", "raw", "-c", "read -P 0x22 6M 2M", uri]).stdout
        )
    out = tmp_path / "restored.img"
    openbdr("restore", "--repo", url, "--host", "h1", "--to", str(out))
    assert sha256(out) == sha256(img)


def test_point_image_cache_is_bounded(small_repo: tuple[str, Path]) -> None:
    url, img = small_repo
    repo = open_target(url)
    point = repo.point("h1", "latest")
    pi = PointImage(repo.reader(point, point.disks[0]), cache_blocks=2)
    data = img.read_bytes()
    for _ in range(2):
        for mib in (0, 1, 2, 7, 19):
            assert pi.pread(mib << 20, 1 << 20) == data[mib << 20 : (mib + 1) << 20]
    assert len(pi._cache) == 2
    assert pi.fetches == 10  # each pass re-fetched: the cache held only two blocks
    cow = CowImage(pi)
    try:
        cow.pwrite(len(data) - 10, b"0123456789")
        assert cow.pread(len(data) - 20, 100) == data[-20:-10] + b"0123456789"
        fd = cow.fd
        assert os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")
    finally:
        cow.close()


def test_drill_serve_command_serves_until_terminated(
    small_repo: tuple[str, Path], tmp_path: Path
) -> None:
    import signal

    from ..helpers import OPENBDR

    url, img = small_repo
    sock = tmp_path / "serve.sock"
    proc = subprocess.Popen(
        [*OPENBDR, "drill", "serve", "--repo", url, "--host", "h1", "--socket", str(sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        uri = proc.stdout.readline().strip()
        assert uri == f"nbd+unix:///disk0?socket={sock}"
        out = tmp_path / "copy.img"
        run(["qemu-img", "convert", "-O", "raw", uri, str(out)])
        assert sha256(out) == sha256(img)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not sock.exists()
