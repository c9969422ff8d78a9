"""Faults: the gateway SIGKILLed at 10 moments of a sync, the sender at 10 more; bad input
(wrong checksum, block past the end, unknown disk, wrong length, wrong credential)
rejected with a clear error and nothing written."""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openbdr.blocks import BLOCK_SIZE
from openbdr.chunk import ChunkCodec, Codec
from openbdr.errors import CorruptionError, OpenBDRError
from openbdr.gateway.site import volume_name
from openbdr.store.block.client import GatewayAuthError, GatewayClient, GatewayError
from openbdr.store.block.target import BlockTarget
from openbdr.store.block.volumes import open_store
from openbdr.store.block.wire import API, frame_parts
from openbdr.store.target import WriteOptions

from .conftest import GatewayProc
from .driver import drive, read_back
from .images import ext4_image, ext4_write

ROOT = Path(__file__).resolve().parents[2]


def _busy_image(path: Path, seed: int) -> Path:
    img = ext4_image(path, 64, seed=seed)
    ext4_write(img, "bulk.bin", random.Random(seed).randbytes(24 << 20))
    return img


@pytest.mark.parametrize("backend_url", ["file", "rbd", "ebs"], indirect=True)
def test_gateway_killed_at_ten_moments(gateway: GatewayProc, tmp_path: Path) -> None:
    img = _busy_image(tmp_path / "disk.img", 5)
    target = BlockTarget(gateway.url)
    p1 = drive(target, "h1", [img])
    first = img.read_bytes()
    ext4_write(img, "bulk.bin", os.urandom(20 << 20))
    ext4_write(img, "other.bin", os.urandom(8 << 20))
    moments = set(random.Random(7).sample(range(1, 60), 10))
    kills = []

    def on_block(n: int) -> None:
        if n in moments:
            gateway.kill()  # puts of other threads are in flight: they retry
            kills.append(n)
            gateway.start()

    p2 = drive(target, "h1", [img], WriteOptions(compression=Codec.ZSTD), on_block=on_block)
    assert len(kills) == 10
    assert read_back(target, p1) == first
    assert read_back(target, p2) == img.read_bytes()
    assert target.verify("h1", deep=True).ok


def test_sender_killed_at_ten_moments(gateway: GatewayProc, tmp_path: Path) -> None:
    img = _busy_image(tmp_path / "disk.img", 6)
    target = BlockTarget(gateway.url)
    p1 = drive(target, "h2", [img])
    first = img.read_bytes()
    ext4_write(img, "bulk.bin", os.urandom(24 << 20))
    rnd = random.Random(11)
    cmd = [sys.executable, "-m", "tests.block.sender", gateway.url, "h2", str(img)]
    for _ in range(10):  # each run resumes from the last one's checkpoint, then dies
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        at = rnd.randint(1, 6)
        sent = 0
        while sent < at:
            line = proc.stdout.readline()
            assert line and not line.startswith(b"committed"), proc.stderr.read()[-2000:]
            sent += 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert [p.id for p in target.points("h2")] == [p1.id]
        assert read_back(target, p1) == first
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    last = target.points("h2")[-1]
    assert read_back(target, last) == img.read_bytes()
    assert read_back(target, p1) == first
    assert target.verify("h2", deep=True).ok


class _Killed(Exception):
    """The sender 'dies' here (the test stops calling the gateway)."""


def _run_part(target: BlockTarget, img: Path, fingerprint: dict, blocks: int, cut: bool) -> None:
    """A sync of `img` that does its first `blocks` blocks, checkpoints and stops; `cut`: it
    dies after the first request of that checkpoint."""
    data = img.read_bytes()
    with target.begin("ck1", WriteOptions()) as s:
        w = s.disk(0, img.name, len(data), fingerprint, "full")
        for i in range(blocks):
            if not w.is_done(i):
                block = memoryview(data)[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                cid = s.chunk_id(block)
                w.put(i, block, cid)
                w.done(i, cid)
        if cut:
            call, made = s.call, []  # type: ignore[attr-defined]

            def dying(*a: object, **kw: object) -> object:
                if made:
                    raise _Killed
                made.append(a)
                return call(*a, **kw)

            s.call = dying  # type: ignore[attr-defined]
            with pytest.raises(_Killed):
                s.checkpoint({})
            s.call = call  # type: ignore[attr-defined]
        else:
            s.checkpoint({})


@pytest.mark.parametrize("backend_url", ["file"], indirect=True)  # backend-blind
def test_a_checkpoint_cut_short_never_mixes_two_runs(gateway: GatewayProc, tmp_path: Path) -> None:
    """Run 1 checkpoints 8 blocks of a view; run 2, of another view, starts over and dies in
    its first checkpoint; run 3, of the first view again, resumes run 1's checkpoint whole:
    never run 1's done bitmap with run 2's index (which names 4 blocks: the other 4 would be
    committed as zeros, a point consistent with its own index and wrong)."""
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(16 * BLOCK_SIZE))
    st = img.stat()
    view = {"path": str(img), "size": st.st_size, "mtime": st.st_mtime_ns}  # as drive() has it
    target = BlockTarget(gateway.url)
    _run_part(target, img, view, 8, cut=False)
    _run_part(target, img, dict(view, mtime=1), 4, cut=True)
    p = drive(target, "ck1", [img])
    assert read_back(target, p) == img.read_bytes()
    assert target.verify("ck1", deep=True).ok


@pytest.mark.parametrize("backend_url", ["file"], indirect=True)  # backend-blind
def test_a_request_cut_short_is_not_acted_on(gateway: GatewayProc) -> None:
    """A sender killed while it sends a request body: the gateway never acts on the part of
    it that arrived (a checkpoint object cut short once made the next run start over)."""
    raw = _Raw(gateway)
    raw.sync("begin", {"parent": None})
    ctx = ssl.create_default_context(cafile=str(gateway.root / "tls" / "cert.pem"))
    head = (
        f"PUT {API}/sync/bad1/blob/cut HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {raw.client.token}\r\n"
        f"X-OpenBDR-Lease: {raw.lease}\r\nContent-Length: 4096\r\n\r\n"
    )
    with (
        socket.create_connection(("127.0.0.1", gateway.port)) as sock,
        ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(head.encode() + b"x" * 100)
        # closed without a TLS close_notify, as a killed process's socket is
    time.sleep(0.5)
    with pytest.raises(GatewayError, match="no checkpoint object cut"):
        raw.sync_get("blob/cut")


class _Raw:
    """Requests as an agent sends them, for the bad ones."""

    def __init__(self, gateway: GatewayProc) -> None:
        self.client = GatewayClient(gateway.url)
        self.codec = ChunkCodec(bytes.fromhex(self.client.call("GET", f"{API}/info")["hash_key"]))
        self.lease = "test-lease"

    def sync(self, what: str, body: object) -> object:
        return self.client.call(
            "POST" if what != "blocks" else "PUT", f"{API}/sync/bad1/{what}", body, lease=self.lease
        )

    def blocks(self, *frames: tuple[bytes, bytes]) -> object:
        return self.sync("blocks", b"".join(p for f in frames for p in f))

    def sync_get(self, what: str) -> object:
        return self.client.call("GET", f"{API}/sync/bad1/{what}", lease=self.lease, raw=True)


def test_bad_blocks_are_rejected_and_nothing_is_written(
    gateway: GatewayProc, backend_url: str
) -> None:
    raw = _Raw(gateway)
    raw.sync("begin", {"parent": None})
    raw.sync("disk", {"no": 0, "name": "sda", "size": 4 * BLOCK_SIZE + 512})
    good = os.urandom(BLOCK_SIZE)
    cid = raw.codec.chunk_id(good)
    env = raw.codec.encode(good, cid).data

    with pytest.raises(CorruptionError, match=r"block 1 of disk 0 .* does not match its hash"):
        raw.blocks(frame_parts(0, 1, raw.codec.chunk_id(b"other" * 10), env))
    damaged = bytearray(ChunkCodec(raw.codec.hash_key, Codec.ZSTD).encode(good, cid).data)
    damaged[-5] ^= 0xFF
    with pytest.raises(CorruptionError, match="checksum mismatch"):
        raw.blocks(frame_parts(0, 1, cid, bytes(damaged)))
    with pytest.raises(OpenBDRError, match=r"block 5 of disk 0 .* past the end of the disk"):
        raw.blocks(frame_parts(0, 5, cid, env))
    with pytest.raises(OpenBDRError, match=r"block 4 of disk 0 .* is 1048576 bytes; .* 512"):
        raw.blocks(frame_parts(0, 4, cid, env))
    with pytest.raises(OpenBDRError, match="host bad1 has no disk 7 in its open sync"):
        raw.blocks(frame_parts(7, 0, cid, env))
    store = open_store(backend_url)
    vol = store.open(volume_name("bad1", "sda"))
    assert vol.read(0, 4 * BLOCK_SIZE + 512) == bytes(4 * BLOCK_SIZE + 512)
    # a good block in a batch beside a bad one is not written either
    bad = frame_parts(0, 2, raw.codec.chunk_id(b"other"), env)
    with pytest.raises(CorruptionError, match=r"block 2 of disk 0 .* does not match its hash"):
        raw.blocks(frame_parts(0, 1, cid, env), bad)
    assert vol.read(0, 4 * BLOCK_SIZE + 512) == bytes(4 * BLOCK_SIZE + 512)
    with pytest.raises(OpenBDRError, match="batch truncated"):
        raw.sync("blocks", b"".join(frame_parts(0, 1, cid, env))[:-1])
    assert vol.read(0, 4 * BLOCK_SIZE + 512) == bytes(4 * BLOCK_SIZE + 512)
    assert raw.blocks(frame_parts(0, 1, cid, env)) == {"written": BLOCK_SIZE}
    assert raw.blocks(frame_parts(0, 1, cid, env)) == {"written": 0}  # idempotent
    assert vol.read(BLOCK_SIZE, BLOCK_SIZE) == good
    store.close()


@pytest.mark.parametrize("backend_url", ["file"], indirect=True)  # backend-blind
def test_wrong_credentials_are_refused(gateway: GatewayProc) -> None:
    url = gateway.url.split("&token_file=")[0] + "&retry=1"
    with pytest.raises(GatewayAuthError, match="does not know this credential"):
        BlockTarget(url, token="not-a-token")
    with pytest.raises(GatewayAuthError, match="no credential"):
        BlockTarget(url.replace("gateway://", "gateway://") + "&token_file=", token="")
    other = subprocess.run(
        [
            str(ROOT / ".venv/bin/openbdr"),
            "gateway",
            "token",
            "add",
            "--root",
            str(gateway.root),
            "agent-2",
            "--hosts",
            "web9",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    t = BlockTarget(url, token=other)
    with pytest.raises(GatewayAuthError, match="agent agent-2 may not sync host db1"):
        t.begin("db1", WriteOptions())
    # an untrusted certificate is an error too, not a silent downgrade
    with pytest.raises(GatewayAuthError, match="TLS certificate is not trusted"):
        BlockTarget(f"gateway://127.0.0.1:{gateway.port}?retry=1", token=other)


@pytest.mark.root
def test_gateway_disk_full_keeps_the_earlier_point(tmp_path: Path) -> None:
    """Local volumes on a small file system fill up mid-sync: the sync fails with a clear
    error, the earlier point stays whole, and once there is room the sync completes."""
    vols = tmp_path / "small"
    vols.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40M", "tmpfs", str(vols)], check=True)
    g = None
    try:
        g = GatewayProc(tmp_path / "gw", f"file://{vols}")
        img = ext4_image(tmp_path / "disk.img", 48, seed=8)  # about 16 MiB of data
        target = BlockTarget(g.url)
        p1 = drive(target, "full1", [img])
        first = img.read_bytes()
        ext4_write(img, "big.bin", os.urandom(30 << 20))  # new blocks + their pre-images
        with pytest.raises(OpenBDRError, match="no space left on the gateway"):
            drive(target, "full1", [img])
        assert [p.id for p in target.points("full1")] == [p1.id]
        assert read_back(target, p1) == first
        subprocess.run(["mount", "-o", "remount,size=160M", str(vols)], check=True)
        p2 = drive(target, "full1", [img])
        assert read_back(target, p2) == img.read_bytes()
        assert read_back(target, p1) == first
    finally:
        if g is not None:
            g.stop()
        subprocess.run(["umount", "-l", str(vols)], check=False)


@pytest.mark.parametrize("backend_url", ["file"], indirect=True)  # backend-blind
def test_meta_objects_need_a_site_wide_credential(gateway: GatewayProc) -> None:
    """Drill reports of every host live in the target's meta store: an agent limited to its
    own hosts may not read or write them."""
    site = BlockTarget(gateway.url)
    site.meta.put("drills/web9/d1/report.json", b"{}")
    assert site.meta.get("drills/web9/d1/report.json") == b"{}"
    assert [i.key for i in site.meta.list("drills/")] == ["drills/web9/d1/report.json"]
    limited = subprocess.run(
        [
            str(ROOT / ".venv/bin/openbdr"),
            "gateway",
            "token",
            "add",
            "--root",
            str(gateway.root),
            "agent-3",
            "--hosts",
            "web9",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    agent = BlockTarget(gateway.url.split("&token_file=")[0], token=limited)
    with pytest.raises(GatewayAuthError, match="site-wide"):
        agent.meta.get("drills/web9/d1/report.json")
    with pytest.raises(GatewayAuthError, match="site-wide"):
        agent.meta.put("drills/web9/d1/report.json", b"forged")
    assert site.meta.get("drills/web9/d1/report.json") == b"{}"


@pytest.mark.parametrize("backend_url", ["file"], indirect=True)  # backend-blind
def test_a_swapped_index_is_refused(gateway: GatewayProc, tmp_path: Path) -> None:
    """Each point records its index's BLAKE3: an index swapped with another point's is
    refused by the reader and reported by verify, never used to read wrong bytes."""
    img = ext4_image(tmp_path / "disk.img", 16, seed=14)
    target = BlockTarget(gateway.url)
    p1 = drive(target, "sw1", [img])
    ext4_write(img, "x.bin", os.urandom(2 << 20))
    p2 = drive(target, "sw1", [img])
    state = gateway.root / "state"
    a, b = state / p1.disks[0].index_key, state / p2.disks[0].index_key
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(CorruptionError, match="is not the one the point was committed with"):
        read_back(target, p1)
    rep = target.verify("sw1")
    assert len(rep.problems) == 2 and "committed with" in str(rep.problems[0])
