"""Bad input gets one clear line, a non-zero exit, and nothing stored is harmed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ..helpers import loop_device, openbdr, sha256


def _one_line_error(proc: object, *words: str) -> None:
    rc, err = proc.returncode, proc.stderr.strip()  # type: ignore[attr-defined]
    assert rc != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("openbdr: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def repo_with_point(tmp_path: Path) -> tuple[str, Path]:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(6 << 20) + b"tail" * 1000)
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "-r", repo, "-H", "h", "-c", "lz4", "--all-data", str(image))
    return repo, image


def test_missing_source(repo_with_point: tuple[str, Path], tmp_path: Path) -> None:
    repo, _ = repo_with_point
    proc = openbdr("sync", "-r", repo, "-H", "h", str(tmp_path / "nope.img"), check=False)
    _one_line_error(proc, "nope.img", "no such file")
    assert len(json.loads(openbdr("points", "-r", repo, "--json").stdout)) == 1


def test_directory_is_not_a_source(repo_with_point: tuple[str, Path], tmp_path: Path) -> None:
    repo, _ = repo_with_point
    _one_line_error(
        openbdr("sync", "-r", repo, "-H", "h", str(tmp_path), check=False),
        "not a regular file or block device",
    )


@pytest.mark.root
def test_unreadable_device(repo_with_point: tuple[str, Path], tmp_path: Path) -> None:
    repo, image = repo_with_point
    with loop_device(image) as dev:
        pass  # detached again: the node stays, with no backing file
    proc = openbdr("sync", "-r", repo, "-H", "h", dev, check=False)
    _one_line_error(proc, dev)
    openbdr("verify", "-r", repo, "--deep")


def test_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _one_line_error(
        openbdr("points", "-r", str(tmp_path / "empty"), check=False),
        "not an OpenBDR repository",
        "repo init",
    )
    _one_line_error(
        openbdr("points", "-r", str(tmp_path / "missing"), check=False), "does not exist"
    )


def test_unknown_format_version(repo_with_point: tuple[str, Path]) -> None:
    repo, _ = repo_with_point
    cfg = Path(repo) / "config"
    data = json.loads(cfg.read_text())
    data["version"] = 99
    cfg.write_text(json.dumps(data))
    _one_line_error(openbdr("points", "-r", repo, check=False), "format version 99")


def test_s3_endpoint_unreachable(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        AWS_ENDPOINT_URL_S3="http://127.0.0.1:9",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
        OPENBDR_S3_CONNECT_TIMEOUT="1",
    )
    proc = openbdr("points", "-r", "s3://bucket/prefix", check=False, env=env)
    _one_line_error(proc, "cannot reach S3 endpoint", "127.0.0.1:9")


@pytest.mark.root
def test_target_too_small(repo_with_point: tuple[str, Path], tmp_path: Path) -> None:
    repo, _ = repo_with_point
    small = tmp_path / "small.img"
    small.write_bytes(bytes(2 << 20))
    with loop_device(small) as dev:
        proc = openbdr("restore", "-r", repo, "-H", "h", "--to", dev, check=False)
    _one_line_error(proc, "too small")


def test_init_refuses_an_existing_repository(repo_with_point: tuple[str, Path]) -> None:
    repo, _ = repo_with_point
    _one_line_error(openbdr("repo", "init", repo, check=False), "already an OpenBDR repository")


def test_flipped_byte_is_found_by_verify_and_stops_restore(
    repo_with_point: tuple[str, Path], tmp_path: Path
) -> None:
    repo, image = repo_with_point
    chunks = sorted(p for p in (Path(repo) / "chunks").rglob("*") if p.is_file())
    victim = chunks[len(chunks) // 2]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    openbdr("verify", "-r", repo)  # quick: the chunk is present
    proc = openbdr("verify", "-r", repo, "--deep", check=False)
    assert proc.returncode == 3  # damaged data
    bad = [ln for ln in proc.stderr.splitlines() if ln.startswith("BAD ")]
    assert len(bad) >= 1 and "disk 0 block" in bad[0] and "offset" in bad[0]
    # the block named is the one whose chunk was damaged
    index_file = next((Path(repo) / "indexes").rglob("0"))
    from openbdr.store.index import DiskIndex

    idx = DiskIndex.from_bytes(index_file.read_bytes())
    blocks = [i for i, cid in idx.nonzero() if cid.hex() == victim.name]
    assert any(f"block {b} " in bad[0] for b in blocks)
    target = tmp_path / "out.img"
    proc = openbdr("restore", "-r", repo, "-H", "h", "--to", str(target), check=False)
    _one_line_error(proc, "block", "checksum mismatch")
    assert proc.returncode == 3 and not target.exists()
    assert sha256(image)  # the source is untouched
