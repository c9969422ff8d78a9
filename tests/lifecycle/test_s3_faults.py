"""Syncs against the real Ceph S3 gateway through injected faults and a gateway restart."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from ..conftest import CEPH, _read_env
from ..helpers import OPENBDR, openbdr, sha256
from .faultproxy import FaultProxy

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def _upstream(ceph: dict[str, str]) -> tuple[str, int]:
    u = urlparse(ceph["AWS_ENDPOINT_URL_S3"])
    return u.hostname or "127.0.0.1", int(u.port or 80)


@pytest.fixture
def proxy(ceph: dict[str, str]) -> Iterator[FaultProxy]:
    p = FaultProxy(lambda: _upstream(ceph))
    try:
        yield p
    finally:
        p.close()


def _env(proxy: FaultProxy, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL"):
        env[k] = proxy.url
    env.update(extra)
    return env


def _image(path: Path, mib: int, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    with open(path, "wb") as f:
        for i in range(mib):
            if i % 4 == 3:
                f.write(bytes(1 << 20))  # some zero blocks
            else:
                f.write(rng.randbytes(1 << 20))
    return path


def _mutate(path: Path, blocks: list[int], seed: int) -> None:
    import random

    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for b in blocks:
            f.seek(b * (1 << 20) + 4096)
            f.write(rng.randbytes(8192))


def test_sync_through_ten_percent_faults(
    proxy: FaultProxy, s3_url: str, tmp_path: Path
) -> None:
    image = _image(tmp_path / "disk.img", 24, seed=1)
    env = _env(proxy, OPENBDR_S3_RETRY_DEADLINE="120")
    openbdr("repo", "init", s3_url, env=env)
    proxy.rate = 0.10
    openbdr("sync", "-r", s3_url, "-H", "h", "--all-data", "-c", "zstd", str(image), env=env)
    first = sha256(image)
    _mutate(image, [0, 5, 9, 17], seed=2)
    openbdr("sync", "-r", s3_url, "-H", "h", "--all-data", "-c", "zstd", str(image), env=env)
    assert proxy.counts.get("requests", 0) > 40
    assert sum(proxy.counts.get(f, 0) for f in ("drop", "delay", "error", "cut")) >= 3
    openbdr("restore", "-r", s3_url, "-H", "h", "--to", str(tmp_path / "r2.img"), env=env)
    assert sha256(tmp_path / "r2.img") == sha256(image)
    pts = openbdr("points", "-r", s3_url, "-H", "h", "--json", env=env).stdout
    first_id = pts.split('"id": "')[1].split('"')[0]
    openbdr(
        "restore", "-r", s3_url, "-H", "h", "-p", first_id, "--to", str(tmp_path / "r1.img"),
        env=env,
    )
    assert sha256(tmp_path / "r1.img") == first
    proxy.rate = 0.0
    openbdr("verify", "-r", s3_url, "--deep", env=env)


def _ceph(cmd: str, ceph: dict[str, str]) -> None:
    subprocess.run([str(CEPH), cmd, ceph["CEPH_DIR"]], check=True, capture_output=True)


def test_gateway_stopped_mid_sync(
    ceph: dict[str, str], proxy: FaultProxy, s3_url: str, tmp_path: Path
) -> None:
    image = _image(tmp_path / "disk.img", 40, seed=3)
    env = _env(proxy, OPENBDR_S3_RETRY_DEADLINE="240")
    openbdr("repo", "init", s3_url, env=env)
    sync = subprocess.Popen(
        [*OPENBDR, "sync", "-r", s3_url, "-H", "h",
         "--all-data", "--bwlimit", "3M", "--checkpoint-interval", "1", str(image)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while proxy.counts.get("requests", 0) < 15 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sync.poll() is None, sync.communicate()
        _ceph("stop", ceph)
        time.sleep(20)  # the gateway is away for ~30 s in all (stop + start)
        _ceph("start", ceph)
        new = _read_env(str(Path(ceph["CEPH_DIR"]) / "env"))
        ceph.update(new)  # radosgw may have come back on another port
        os.environ.update(new)
        _out, err = sync.communicate(timeout=600)
    finally:
        if sync.poll() is None:
            sync.kill()
            sync.wait()
    assert sync.returncode == 0, err
    openbdr("restore", "-r", s3_url, "-H", "h", "--to", str(tmp_path / "r.img"), env=env)
    assert sha256(tmp_path / "r.img") == sha256(image)
    openbdr("verify", "-r", s3_url, "--deep", env=env)
