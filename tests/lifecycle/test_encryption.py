"""Encrypted repositories: no plaintext in objects, tampering detected, passphrases."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from openbdr.errors import OpenBDRError
from openbdr.restore import restore
from openbdr.store.objects.repository import Repository
from openbdr.store.objects.scrub import load_state
from openbdr.store.objects.target import ObjectTarget
from openbdr.store.objects.verify import verify

from ..helpers import openbdr, sha256

WINDOW = 17  # a plaintext run longer than 16 bytes


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBDR_SCRYPT_N", "1024")


def _source(path: Path) -> bytes:
    rng = random.Random(7)
    words = [rng.randbytes(6).hex() for _ in range(300)]
    text = " ".join(rng.choice(words) for _ in range(200_000)).encode()[: 1 << 20]
    data = text + rng.randbytes(1 << 20) + text[: 1 << 19]
    path.write_bytes(data)
    return data


def _plaintext_runs(repo_dir: Path, source: bytes, prefixes: tuple[str, ...]) -> list[str]:
    windows = {hash(source[i : i + WINDOW]) for i in range(len(source) - WINDOW + 1)}
    hits = []
    for p in sorted(repo_dir.rglob("*")):
        rel = str(p.relative_to(repo_dir))
        if not p.is_file() or not rel.startswith(prefixes):
            continue
        data = p.read_bytes()
        if any(hash(data[i : i + WINDOW]) in windows for i in range(len(data) - WINDOW + 1)):
            hits.append(rel)
    return hits


def _sync(repo: str, image: Path, *extra: str, password: str = "pw") -> None:
    env = dict(os.environ, OPENBDR_PASSWORD=password)
    openbdr("sync", "-r", repo, "-H", "web-1", "--all-data", *extra, str(image), env=env)


def test_no_plaintext_in_chunks_or_indexes(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    source = _source(image)
    enc, plain = tmp_path / "enc", tmp_path / "plain"
    openbdr("repo", "init", "--encrypt", str(enc), env=dict(os.environ, OPENBDR_PASSWORD="pw"))
    openbdr("repo", "init", str(plain))
    for repo in (enc, plain):
        _sync(str(repo), image, "-c", "none")
        _sync(str(repo), image, "-c", "zstd", "--full")
    scanned = ("chunks/", "indexes/", "points/", "checkpoints/", "config", "keys/")
    assert _plaintext_runs(enc, source, scanned) == []
    # the same scan finds the source in an unencrypted repository: the check can fail
    assert any(h.startswith("chunks/") for h in _plaintext_runs(plain, source, ("chunks/",)))
    config = (enc / "config").read_text()
    assert "hash_key" not in config and "web-1" not in config
    env = dict(os.environ, OPENBDR_PASSWORD="pw")
    openbdr("restore", "-r", str(enc), "-H", "web-1", "--to", str(tmp_path / "r.img"), env=env)
    assert sha256(tmp_path / "r.img") == sha256(image)


def _positions(size: int, rng: random.Random) -> list[int]:
    if size <= 2048:
        return list(range(size))
    return sorted({*range(64), size - 1, size - 17, *(rng.randrange(size) for _ in range(24))})


def _check_everything(repo_dir: Path, out: Path) -> None:
    repo = Repository.open(str(repo_dir), passphrase="pw")
    report = verify(repo, deep=True, mark=False)
    if not report.ok:
        raise OpenBDRError(str(report.problems[0]))
    for p in repo.points():
        restore(ObjectTarget(repo), p, str(out), force=True)


def test_tampering_with_any_byte_is_detected(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(random.Random(1).randbytes(3 << 20) + b"x" * 5000)
    repo_dir = tmp_path / "repo"
    Repository.init(str(repo_dir), encrypt=True, passphrase="pw")
    _sync(str(repo_dir), image, "-c", "lz4")
    out = tmp_path / "out.img"
    _check_everything(repo_dir, out)  # intact: passes
    rng = random.Random(3)
    objects = [p for p in sorted(repo_dir.rglob("*")) if p.is_file()]
    assert {str(p.relative_to(repo_dir)).split("/")[0] for p in objects} >= {
        "config", "keys", "chunks", "indexes", "points"
    }
    tried = 0
    for obj in objects:
        original = obj.read_bytes()
        for pos in _positions(len(original), rng):
            bad = bytearray(original)
            bad[pos] ^= 1 << rng.randrange(8)
            obj.write_bytes(bad)
            try:
                if obj.relative_to(repo_dir).parts[0] == "scrub":
                    # bookkeeping, not data: detected and discarded, never trusted nor fatal
                    scrub_repo = Repository.open(str(repo_dir), passphrase="pw")
                    assert load_state(scrub_repo) == {}
                    _check_everything(repo_dir, out)
                    continue
                with pytest.raises((OpenBDRError, ValueError)):
                    _check_everything(repo_dir, out)
            except BaseException:
                print(f"undetected: {obj.relative_to(repo_dir)} byte {pos}")
                raise
            finally:
                obj.write_bytes(original)
            tried += 1
    assert tried > 500
    _check_everything(repo_dir, out)


def _lines(proc: object) -> list[str]:
    return proc.stderr.strip().splitlines()  # type: ignore[attr-defined]


def test_wrong_passphrase_and_key_slots(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(2 << 20))
    repo = tmp_path / "repo"
    pw1, pw2, pw3 = (tmp_path / n for n in ("pw1", "pw2", "pw3"))
    pw1.write_text("first secret\n")
    pw2.write_text("second secret\n")
    pw3.write_text("third secret\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBDR_PASSWORD")}
    openbdr("--password-file", str(pw1), "repo", "init", "--encrypt", str(repo), env=env)
    openbdr("--password-file", str(pw1), "sync", "-r", str(repo), "-H", "h", str(image), env=env)
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*")}
    for args in (("points",), ("sync", "-H", "h", str(image)), ("gc", "--margin", "0")):
        proc = openbdr(args[0], "-r", str(repo), *args[1:], check=False,
                       env=dict(env, OPENBDR_PASSWORD="nope"))
        assert proc.returncode != 0
        assert _lines(proc) == [
            f"openbdr: error: wrong passphrase for repository {repo} "
            "(check OPENBDR_PASSWORD or --password-file)"
        ]
    proc = openbdr("points", "-r", str(repo), check=False, env=env, stdin=subprocess_devnull())
    assert proc.returncode != 0 and len(_lines(proc)) == 1 and "no passphrase" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in repo.rglob("*")} == before  # nothing written
    openbdr("--password-file", str(pw1), "repo", "key", "add", "-r", str(repo),
            "--new-password-file", str(pw2), env=env)
    openbdr("--password-file", str(pw2), "repo", "key", "rotate-passphrase", "-r", str(repo),
            "--new-password-file", str(pw3), env=env)
    assert openbdr("points", "-r", str(repo), check=False,
                   env=dict(env, OPENBDR_PASSWORD_FILE=str(pw2))).returncode == 7
    slots = openbdr("--password-file", str(pw3), "repo", "key", "list", "-r", str(repo), env=env)
    assert len(slots.stdout.strip().splitlines()) == 2
    mine = next(ln.split()[1] for ln in slots.stdout.splitlines() if ln.startswith("*"))
    other = next(ln.split()[0] for ln in slots.stdout.splitlines() if not ln.startswith("*"))
    openbdr("--password-file", str(pw3), "repo", "key", "remove", "-r", str(repo), other, env=env)
    proc = openbdr("--password-file", str(pw3), "repo", "key", "remove", "-r", str(repo), mine,
                   check=False, env=env)
    assert proc.returncode != 0 and "last one" in proc.stderr
    assert openbdr("points", "-r", str(repo), check=False,
                   env=dict(env, OPENBDR_PASSWORD_FILE=str(pw1))).returncode == 7
    openbdr("--password-file", str(pw3), "restore", "-r", str(repo), "-H", "h",
            "--to", str(tmp_path / "r.img"), env=env)
    assert sha256(tmp_path / "r.img") == sha256(image)


def subprocess_devnull() -> int:
    import subprocess

    return subprocess.DEVNULL
