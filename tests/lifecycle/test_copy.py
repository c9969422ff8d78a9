"""`openbdr copy`: restore points at a second site, byte-identical, incremental, resumable.

Against the real Ceph RGW: directory → S3, and S3 → S3 between repositories encrypted
under different passphrases (so every block is decrypted, re-hashed and re-encrypted).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

from ..helpers import OPENBDR, openbdr, sha256

MIB = 1 << 20


def _five_points(repo: str, image: Path, size_mib: int, env: dict[str, str]) -> dict[str, str]:
    """Five syncs of an image changed a little each time; point id -> sha256 of the image."""
    rng = random.Random(17)
    data = bytearray(rng.randbytes(size_mib * MIB))
    data[2 * MIB : 3 * MIB] = bytes(MIB)  # a hole
    shas: dict[str, str] = {}
    for n in range(5):
        if n:
            for _ in range(2):
                at = rng.randrange(0, size_mib) * MIB
                data[at : at + MIB] = rng.randbytes(MIB) if n != 3 else bytes(MIB)
        image.write_bytes(data)
        openbdr("sync", "-r", repo, "-H", "web1", "--all-data", str(image), env=env)
        latest = json.loads(openbdr("points", "-r", repo, "--json", env=env).stdout)[-1]
        shas[latest["id"]] = sha256(image)
    return shas


def _restores(repo: str, shas: dict[str, str], tmp: Path, env: dict[str, str]) -> None:
    for pid, sha in shas.items():
        out = tmp / f"r-{pid}.img"
        openbdr("restore", "-r", repo, "-H", "web1", "-p", pid, "--to", str(out), env=env)
        assert sha256(out) == sha, f"point {pid} restored differently from the copy"
        out.unlink()


def _copy(*args: str, env: dict[str, str], check: bool = True) -> dict[str, object]:
    proc = openbdr("copy", *args, "--json", env=env, check=check)
    return json.loads(proc.stdout)["hosts"][0]  # type: ignore[no-any-return]


def test_copy_directory_to_s3(tmp_path: Path, s3_url: str) -> None:
    env = dict(os.environ)
    src = str(tmp_path / "site-a")
    openbdr("repo", "init", src)
    openbdr("repo", "init", s3_url)
    shas = _five_points(src, tmp_path / "disk.img", 8, env)
    first = _copy("--from", src, "--to", s3_url, "-H", "web1", env=env)
    assert first["copied"] == list(shas)
    assert first["verified_blocks"] > 0
    points = json.loads(openbdr("points", "-r", s3_url, "--json").stdout)
    assert [p["id"] for p in points] == list(shas)
    _restores(s3_url, shas, tmp_path, env)
    again = _copy("--from", src, "--to", s3_url, "-H", "web1", env=env)
    assert again["copied"] == [] and again["blocks_read"] == 0 and again["chunks_stored"] == 0
    # incremental: a sixth point copies only the blocks that changed since the fifth
    image = tmp_path / "disk.img"
    with open(image, "r+b") as f:
        f.seek(5 * MIB)
        f.write(os.urandom(MIB))
    openbdr("sync", "-r", src, "-H", "web1", "--all-data", str(image))
    sixth = _copy("--from", src, "--to", s3_url, "-H", "web1", env=env)
    assert len(sixth["copied"]) == 1 and sixth["blocks_read"] == 1
    assert sixth["chunks_stored"] == 1
    _restores(s3_url, {sixth["copied"][0]: sha256(image)}, tmp_path, env)  # type: ignore[index]
    openbdr("verify", "-r", s3_url, "--deep")


def test_copy_s3_to_s3_other_keys_killed_and_resumed(
    tmp_path: Path, ceph: dict[str, str]
) -> None:
    bucket = f"t-copy-{os.urandom(4).hex()}"
    src, dst = f"s3://{bucket}/site-a", f"s3://{bucket}/site-b"
    (tmp_path / "a.pass").write_text("passphrase of site a\n")
    (tmp_path / "b.pass").write_text("another passphrase for b\n")
    env_a = dict(os.environ, OPENBDR_PASSWORD="passphrase of site a")
    env_b = dict(os.environ, OPENBDR_PASSWORD="another passphrase for b")
    openbdr("repo", "init", "--encrypt", src, env=env_a)
    openbdr("repo", "init", "--encrypt", dst, env=env_b)
    shas = _five_points(src, tmp_path / "disk.img", 12, env_a)
    args = [
        *OPENBDR, "copy", "--from", src, "--to", dst, "-H", "web1",
        "--from-password-file", str(tmp_path / "a.pass"),
        "--to-password-file", str(tmp_path / "b.pass"),
    ]
    env = dict(os.environ)
    env.pop("OPENBDR_PASSWORD", None)
    rng = random.Random(1717)
    hit = 0
    for _ in range(10):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.8, 3.0))
        if proc.poll() is None:
            hit += 1
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"copy failed after a kill: {proc.returncode}")
    assert hit >= 3, "the copy was too quick to be killed in the middle"
    final = _copy(*args[2:], env=env)
    copied = [p["id"] for p in json.loads(openbdr("points", "-r", dst, "--json", env=env_b).stdout)]
    assert copied == list(shas), final
    _restores(dst, shas, tmp_path, env_b)
    again = _copy(*args[2:], env=env)
    assert again["copied"] == [] and again["chunks_stored"] == 0
    openbdr("verify", "-r", dst, "--deep", env=env_b)
    # the destination's chunks are its own: nothing under site-a's key reads them
    raw = json.loads(openbdr("points", "-r", dst, "--json", env=env_b).stdout)
    assert raw and openbdr("points", "-r", dst, env=env_a, check=False).returncode != 0
