"""GC racing live syncs of two hosts; scrub sampling, damage marks and repair by sync."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

from openbdr.capture.image import open_host
from openbdr.store.objects.gc import CLOCK_SLACK
from openbdr.store.objects.verify import verify
from openbdr.store.retention import Policy, forget
from openbdr.store.target import init_target, open_target
from openbdr.sync import SyncOptions, sync

from ..helpers import openbdr, sha256

MIB = 1 << 20


def _write(path: Path, rng: random.Random, blocks: int) -> None:
    pool = [rng.randbytes(MIB) for _ in range(3)]  # repeats: dedup and re-put of old ids
    with open(path, "wb") as f:
        for _ in range(blocks):
            f.write(rng.choice(pool) if rng.random() < 0.3 else rng.randbytes(MIB))


def test_gc_loop_while_two_hosts_sync(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    init_target(url)
    images = {h: tmp_path / f"{h}.img" for h in ("alpha", "beta")}
    errors: list[BaseException] = []
    stop = threading.Event()
    gc_runs = [0, 0]  # runs, chunks deleted while the syncs ran

    def syncer(host: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            repo = open_target(url)
            for i in range(6):
                if i:
                    # gc spares chunks younger than a live sync's start minus CLOCK_SLACK;
                    # paced so, a forgotten point's chunks age past that while later syncs
                    # run, and deletions really race them (unpaced, a fast run deletes none)
                    time.sleep(CLOCK_SLACK / 2)
                _write(images[host], rng, 6)
                sync(repo, open_host(host, [str(images[host])], valid_only=False),
                     SyncOptions(threads=2, checkpoint_every=0.2))
        except BaseException as exc:
            errors.append(exc)

    def collector() -> None:
        try:
            repo = open_target(url)
            while not stop.is_set():
                forget(repo, Policy(last=2))
                rep = repo.gc(margin=0.0)
                gc_runs[0] += 1
                gc_runs[1] += rep.deleted
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=syncer, args=(h, i)) for i, h in enumerate(images)]
    janitor = threading.Thread(target=collector)
    janitor.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    stop.set()
    janitor.join(timeout=600)
    assert not errors, errors
    assert gc_runs[0] >= 3 and gc_runs[1] > 0, gc_runs  # it really ran and really deleted
    repo = open_target(url)
    report = verify(repo.repo, deep=True, mark=False)
    assert report.ok, [str(p) for p in report.problems]
    assert report.points >= 2
    for host, image in images.items():
        out = tmp_path / f"{host}.restored"
        openbdr("restore", "-r", url, "-H", host, "--to", str(out))
        assert sha256(out) == sha256(image)


def test_scrub_samples_marks_damage_and_sync_repairs(tmp_path: Path) -> None:
    url = str(tmp_path / "repo")
    image = tmp_path / "disk.img"
    image.write_bytes(random.Random(5).randbytes(8 * MIB))
    openbdr("repo", "init", url)
    openbdr("sync", "-r", url, "-H", "h", "--all-data", str(image))
    chunks = sorted((tmp_path / "repo" / "chunks").rglob("*"))
    chunks = [c for c in chunks if c.is_file()]
    assert len(chunks) == 8
    victim = chunks[3]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(data)
    checked, failed = 0, False
    for _ in range(4):  # 4 x 25 % covers every chunk: least recently verified go first
        proc = openbdr("verify", "-r", url, "--deep", "--sample", "25", "--json", check=False)
        rep = json.loads(proc.stdout)
        checked += rep["chunks_checked"]
        failed |= not rep["ok"]
    assert failed
    state = (tmp_path / "repo" / "scrub" / "state").read_bytes()
    proved = {state[k : k + 32].hex() for k in range(0, len(state), 40)}
    assert proved == {c.name for c in chunks} - {victim.name}  # all covered; bad one unproved
    pts = json.loads(openbdr("points", "-r", url, "--json").stdout)
    assert pts[0]["status"] == "damaged"
    manifest = next((tmp_path / "repo" / "points" / "h").glob("*.json"))
    damaged = json.loads(manifest.read_text())["damaged"]
    assert [d["chunk"] for d in damaged] == [victim.name]
    openbdr("sync", "-r", url, "-H", "h", "--all-data", str(image))  # rewrites the block
    assert victim.read_bytes() != bytes(data)
    openbdr("verify", "-r", url, "--deep")
    pts = json.loads(openbdr("points", "-r", url, "--json").stdout)
    assert [p["status"] for p in pts] == ["ok", "ok"]  # the old point is repaired too
    for p in pts:
        out = tmp_path / f"{p['id']}.img"
        openbdr("restore", "-r", url, "-H", "h", "-p", p["id"], "--to", str(out))
        assert sha256(out) == sha256(image)
