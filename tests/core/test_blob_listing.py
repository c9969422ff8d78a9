"""Listing by prefix means the same on a directory as on S3 (the reference semantics),
and a directory lists only what can match (a sync lists `keys/` and `points/<host>/`,
which may not exist; walking the whole repository instead cost every sync more as it grew)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from openbdr.store.blobs import Blobs, open_blobs
from openbdr.store.directory import DirectoryBlobs

KEYS = ["chunks/ab/abc", "chunks/cd/cde", "locks/host-a", "locks/host-b", "locks/other",
        "points/h1/p1.json", "points/h10/p2.json", "config"]
PREFIXES = ["", "chunks/", "chunks/a", "chunks", "locks/host-", "keys/", "points/h2/",
            "points/h1/", "points/h1", "conf", "config", "nothing"]


def _listing(blobs: Blobs, prefix: str) -> list[str]:
    return sorted(info.key for info in blobs.list(prefix))


def _check(blobs: Blobs) -> None:
    for key in KEYS:
        blobs.put(key, b"x")
    for prefix in PREFIXES:
        assert _listing(blobs, prefix) == sorted(k for k in KEYS if k.startswith(prefix)), prefix


def test_directory_listing(tmp_path: Path) -> None:
    _check(DirectoryBlobs(tmp_path / "repo", create=True))


def test_directory_does_not_walk_outside_the_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = DirectoryBlobs(tmp_path / "repo", create=True)
    for key in KEYS:
        blobs.put(key, b"x")
    walked: list[str] = []
    real_walk = os.walk
    monkeypatch.setattr(os, "walk", lambda top, *a, **k: walked.append(str(top)) or real_walk(top, *a, **k))
    assert _listing(blobs, "keys/") == []
    assert _listing(blobs, "points/h2/") == []
    assert walked == []


def test_s3_listing(s3_url: str) -> None:
    _check(open_blobs(s3_url, create=True))
