"""Issue 2 acceptance: a sync killed at random moments never harms earlier points and resumes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ..helpers import OPENBDR, openbdr, sha256


@pytest.mark.slow
def test_sigkill_at_20_random_moments(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4)))
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(40 << 20) + bytes(8 << 20) + os.urandom(16 << 20))
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "-r", repo, "-H", "h", "-c", "zstd", "--all-data", str(image))
    first = json.loads(openbdr("points", "-r", repo, "--json").stdout)[0]["id"]
    want_first = sha256(image)
    # the disk changes everywhere: the next sync must move ~56 MiB, slowly enough to be killed
    with open(image, "r+b") as f:
        f.write(os.urandom(64 << 20))
    want_second = sha256(image)
    cmd = [
        *OPENBDR,
        "sync",
        "-r",
        repo,
        "-H",
        "h",
        "-c",
        "zstd",
        "--all-data",
        "--bwlimit",
        "3M",
        "--checkpoint-interval",
        "0.3",
        str(image),
    ]
    kills = 0
    committed_early = 0
    for _ in range(20):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, 2.0))
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        kills += rc == -signal.SIGKILL
        points = json.loads(openbdr("points", "-r", repo, "--json").stdout)
        committed_early += len(points) > 1
        assert points[0]["id"] == first
        restored = tmp_path / "first.img"
        openbdr("restore", "-r", repo, "-H", "h", "-p", first, "--to", str(restored), "--force")
        assert sha256(restored) == want_first
        openbdr("verify", "-r", repo)
    assert kills >= 15, "the sync finished before most kills: the test did not test"
    unthrottled = [a for a in cmd[1:] if a not in ("--bwlimit", "3M")]
    done = openbdr(*unthrottled)
    assert "restore point" in done.stdout
    latest = tmp_path / "latest.img"
    openbdr("restore", "-r", repo, "-H", "h", "--to", str(latest))
    assert sha256(latest) == want_second
    openbdr("verify", "-r", repo, "--deep")
    # resumed runs did not start over: no checkpoint is left, and nothing is stored twice
    assert not list((Path(repo) / "checkpoints").rglob("state.json"))
    if committed_early == 0:
        chunks = sum(1 for _ in (Path(repo) / "chunks").rglob("*") if _.is_file())
        assert chunks <= 40 + 16 + 64 + 1


def test_a_checkpoint_pair_from_two_moments_is_not_resumed(tmp_path: Path) -> None:
    """state.json, disk0.index and disk0.done are three objects: a run killed between them
    can leave an index and a bitmap of different checkpoints. Resumed from, blocks marked
    done but recorded as zero would silently become zeros in the point."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(24 << 20))
    repo = tmp_path / "repo"
    openbdr("repo", "init", str(repo))
    cmd = [*OPENBDR, "sync", "-r", str(repo), "-H", "h", "--all-data", "--bwlimit", "2M"]
    cmd += ["--checkpoint-interval", "0.2", str(image)]
    ckpt = repo / "checkpoints" / "h"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (ckpt / "state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a checkpoint or two later
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the sync finished first: the test did not test"
    assert (ckpt / "state.json").exists()
    done = ckpt / "disk0.done"
    done.write_bytes(b"\xff" * len(done.read_bytes()))  # another moment's bitmap: all done
    openbdr("sync", "-r", str(repo), "-H", "h", "--all-data", str(image))
    out = tmp_path / "out.img"
    openbdr("restore", "-r", str(repo), "-H", "h", "--to", str(out))
    assert sha256(out) == sha256(image)
