"""AWS source against the fake on loopback (issue 16).

The fake runs as its own process (tests/fakes/aws) with a fixed latency per request
(20 ms by default), its volume backed by the benchmark corpus (../shared/bench: the 8 GiB
disk.img, then disk2.img after mutate.sh's day of changes). Measured:

1. a bare GetSnapshotBlock loop over the snapshot's blocks with N requests in flight
   (what the fake can serve), and the full sync's read throughput with the same N
   (snapshot creation excluded: the fake freezes 8 GiB by reading it);
2. the incremental of the day of changes: EBS API calls against the 512 KiB blocks
   ListChangedBlocks named, and per GiB changed.

Targets: at 64 in flight, full sync ≥ 0.8 × the bare loop; incremental EBS calls ≤
1.05 × changed blocks + listing pages.

    sudo .venv/bin/python benchmarks/bench_aws.py [--synthetic 2] [--doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from openbdr.capture.agentless import AgentlessSnapshot  # noqa: E402
from openbdr.capture.aws import AwsHost  # noqa: E402
from openbdr.capture.registry import open_source  # noqa: E402

DEFAULT_WORKDIR = ROOT / ".work" / "bench-aws"
CORPUS = ROOT / ".work" / "bench"
GIB = 1 << 30
MIB = 1 << 20
EBS_CALLS = ("list_snapshot_blocks", "list_changed_blocks", "get_snapshot_block")


class Fake:
    """The fake's process: one JSON command per line on stdin, one JSON answer back."""

    def __init__(self, workdir: Path, image: Path, latency: float) -> None:
        # --immutable: snapshots point into the image files (never changed in place: the
        # day of changes is another file), not copies of them: an 8 GiB corpus would
        # otherwise cost 5.5 GiB of disk per snapshot
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakes.aws",
                str(workdir),
                str(image),
                "--latency",
                str(latency),
                "--immutable",
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
        )
        assert self.proc.stdout is not None
        self.info: dict[str, Any] = json.loads(self.proc.stdout.readline())

    def cmd(self, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(kw) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def cpu(fake: Fake) -> tuple[float, float]:
    """CPU seconds used so far by this process (all its threads) and by the fake's."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open(f"/proc/{fake.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    fake_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return ru.ru_utime + ru.ru_stime, fake_s


def cpu_per_mib(fake: Fake, before: tuple[float, float], nbytes: int) -> dict[str, float]:
    """CPU milliseconds per MiB moved since `before`: where a CPU-bound box spends it."""
    now = cpu(fake)
    mib = max(nbytes / MIB, 1e-9)
    return {
        "client": round((now[0] - before[0]) * 1000 / mib, 2),
        "fake": round((now[1] - before[1]) * 1000 / mib, 2),
    }


def clients(fake: Fake, in_flight: int) -> tuple[Any, Any]:
    kw = {
        "endpoint_url": fake.info["url"],
        "region_name": "us-east-1",
        "aws_access_key_id": fake.info["access_key_id"],
        "aws_secret_access_key": fake.info["secret_access_key"],
        "config": Config(
            retries={"mode": "standard", "total_max_attempts": 5},
            max_pool_connections=in_flight + 8,
        ),
    }
    return boto3.client("ec2", **kw), boto3.client("ebs", **kw)


def bare_loop(fake: Fake, in_flight: int, limit: int) -> dict[str, Any]:
    """Snapshot, list, then GetSnapshotBlock over (at most `limit`) blocks: MB/s served."""
    ec2, ebs = clients(fake, in_flight)
    sid = ec2.create_snapshots(InstanceSpecification={"InstanceId": fake.info["instance"]})[
        "Snapshots"
    ][0]["SnapshotId"]
    while ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] != "completed":
        time.sleep(0.2)
    blocks: list[tuple[int, str]] = []
    kw: dict[str, Any] = {"SnapshotId": sid, "MaxResults": 10000}
    while True:
        page = ebs.list_snapshot_blocks(**kw)
        blocks += [(b["BlockIndex"], b["BlockToken"]) for b in page["Blocks"]]
        if not page.get("NextToken"):
            break
        kw["NextToken"] = page["NextToken"]
    blocks = blocks[:limit]

    def get(b: tuple[int, str]) -> int:
        r = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=b[0], BlockToken=b[1])
        return len(r["BlockData"].read())

    c0 = cpu(fake)
    t = time.monotonic()
    with ThreadPoolExecutor(in_flight) as pool:
        n = sum(pool.map(get, blocks))
    wall = time.monotonic() - t
    cpu_ms = cpu_per_mib(fake, c0, n)
    ec2.delete_snapshot(SnapshotId=sid)
    return {
        "in_flight": in_flight,
        "bytes": n,
        "wall_s": round(wall, 2),
        "mb_s": round(n / wall / 1e6, 1),
        "cpu_ms_per_mib": cpu_ms,
    }


def open_host(fake: Fake, in_flight: int) -> AwsHost:
    spec = {
        "type": "aws",
        "platform": {
            "endpoint": "us-east-1",
            "credentials": {
                "access_key_id": fake.info["access_key_id"],
                "secret_access_key": fake.info["secret_access_key"],
            },
            "options": {
                "endpoint_url": fake.info["url"],
                "in_flight": in_flight,
                "poll_interval": 0.2,
            },
        },
        "vm": fake.info["instance"],
    }
    host = open_source("bench", spec)
    assert isinstance(host, AwsHost)
    return host


def timed_sync(repo: Path, host: AwsHost, host_fake: Fake, full: bool = False) -> dict[str, Any]:
    """One sync; the time to create and complete the snapshot is kept apart."""
    from openbdr.store.target import init_target, open_target
    from openbdr.sync import SyncOptions, sync

    seen: dict[str, Any] = {}
    orig = host.snapshot

    def snapshot(since: Any) -> AgentlessSnapshot:
        t = time.monotonic()
        snap = orig(since)
        seen["snapshot_s"] = time.monotonic() - t
        seen["cpu0"] = cpu(host_fake)
        seen["snap"] = snap
        return snap

    host.snapshot = snapshot  # type: ignore[method-assign]
    phases: dict[str, float] = {}

    class Phases(logging.Handler):  # the engine logs where the time went, per phase
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg == "sync of %s: %s" and isinstance(record.args, tuple):
                phases.update(record.args[1])

    handler = Phases()
    logging.getLogger("openbdr.sync").addHandler(handler)
    logging.getLogger("openbdr.sync").setLevel(logging.INFO)
    r = open_target(str(repo)) if (repo / "config").exists() else init_target(str(repo))
    before = dict(host.aws.calls)
    t = time.monotonic()
    point = sync(r, host, SyncOptions(full=full))
    wall = time.monotonic() - t
    host.snapshot = orig  # type: ignore[method-assign]
    logging.getLogger("openbdr.sync").removeHandler(handler)
    calls = {k: v - before.get(k, 0) for k, v in host.aws.calls.items() if v - before.get(k, 0)}
    disk = point.disks[0]
    snap = seen["snap"]
    # the engine's first pass: listing done, blocks read, hashed and stored
    read_wall = phases.get("first pass") or (wall - seen["snapshot_s"])
    return {
        "mode": disk.mode,
        "read_bytes": disk.read_bytes,
        "wall_s": round(wall, 2),
        "snapshot_s": round(seen["snapshot_s"], 2),
        "read_mb_s": round(disk.read_bytes / read_wall / 1e6, 1),
        # after the snapshot completed: listing, reads, hashing, stores, commit
        "cpu_ms_per_mib": cpu_per_mib(host_fake, seen["cpu0"], disk.read_bytes),
        "phases": phases,
        "listed_blocks": snap.disks[0].listed_blocks,
        "calls": calls,
        "retries": dict(host.aws.retries),
    }


def source_alone(fake: Fake, in_flight: int) -> dict[str, Any]:
    """The source read as the engine reads it (1 MiB buffers, in order, one consumer
    thread) with nothing stored: what the source itself sustains."""
    host = open_host(fake, in_flight)
    with host.snapshot(None) as snap:
        disk = snap.disks[0]
        extents = disk.extents()
        buf = bytearray(MIB)
        n = 0
        c0 = cpu(fake)
        t = time.monotonic()
        for e in extents:
            pos = e.offset
            while pos < e.end:
                k = min(MIB - pos % MIB, e.end - pos)
                disk.read_into(pos, memoryview(buf)[:k])
                n += k
                pos += k
        wall = time.monotonic() - t
        cpu_ms = cpu_per_mib(fake, c0, n)
    return {
        "in_flight": in_flight,
        "bytes": n,
        "wall_s": round(wall, 2),
        "mb_s": round(n / wall / 1e6, 1),
        "cpu_ms_per_mib": cpu_ms,
    }


def synthetic(where: Path, gib: int) -> tuple[Path, Path]:
    """A `gib` GiB volume half full of random data, and a copy with ~2 % of it rewritten."""
    where.mkdir(parents=True, exist_ok=True)
    a, b = where / "disk.img", where / "disk2.img"
    if not (a.exists() and b.exists()):
        with open(a, "wb") as f:
            f.truncate(gib * GIB)
            for mib in range(0, gib * 1024, 2):
                f.seek(mib * MIB)
                f.write(os.urandom(MIB))
        subprocess.run(["cp", "--sparse=always", str(a), str(b)], check=True)
        with open(b, "r+b") as f:
            for k in range(0, gib * 1024, 50):
                f.seek(k * MIB + 512 * 1024)
                f.write(os.urandom(256 * 1024))
    return a, b


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument(
        "--repos",
        type=Path,
        help="where the syncs' repositories go (default: WORKDIR/run); a tmpfs such as "
        "/dev/shm/NAME makes the target fast, so that the source is what is measured",
    )
    p.add_argument("--corpus", type=Path, default=CORPUS, help="corpus dir (built if missing)")
    p.add_argument("--synthetic", type=int, default=0, help="GiB of a synthetic volume instead")
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--bare", default="8,16,32,64", help="in-flight levels of the bare loop")
    p.add_argument("--sync", default="16,64", help="in-flight levels of the full sync")
    p.add_argument("--bare-blocks", type=int, default=4096, help="blocks per bare loop")
    p.add_argument("--source", default="64", help="in-flight levels of the source read alone")
    p.add_argument("--no-sync", action="store_true", help="skip the syncs (bare and source only)")
    p.add_argument("--json", type=Path)
    p.add_argument("--doc", type=Path, help="rewrite the aws results part of this document")
    a = p.parse_args(argv)
    if a.synthetic:
        disk, disk2 = synthetic(a.workdir / "synthetic", a.synthetic)
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from corpus import ensure_corpus

        c = ensure_corpus(a.corpus)
        disk, disk2 = c.disk, c.disk2
    run = a.workdir / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    vol, vol2 = disk, disk2
    if disk.stat().st_size % GIB or disk2.stat().st_size % GIB:  # the fake would extend them
        vol, vol2 = run / "volume.img", run / "volume2.img"
        subprocess.run(["cp", "--sparse=always", str(disk), str(vol)], check=True)
        subprocess.run(["cp", "--sparse=always", str(disk2), str(vol2)], check=True)
    fake = Fake(run / "fake", vol, a.latency)
    repos = a.repos or run
    out_repos = a.repos
    repos.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "latency_s": a.latency,
        "volume": str(disk),
        "bare": [],
        "full": [],
        "source": [],
    }
    try:
        for n in [int(x) for x in a.bare.split(",") if x]:
            r = bare_loop(fake, n, a.bare_blocks)
            print("bare", r, flush=True)
            out["bare"].append(r)
        for n in [int(x) for x in a.source.split(",") if x]:
            r = source_alone(fake, n)
            print("source alone", r, flush=True)
            out["source"].append(r)
        levels = [] if a.no_sync else [int(x) for x in a.sync.split(",") if x]
        for n in levels:
            repo = repos / f"repo-{n}"
            host = open_host(fake, n)
            r = timed_sync(repo, host, fake)
            r["in_flight"] = n
            print("first full", r, flush=True)
            # again with every chunk stored: what the source reads, not the disk writes
            again = timed_sync(repo, host, fake, full=True)
            again["in_flight"] = n
            again["first_read_mb_s"] = r["read_mb_s"]
            again["first"] = r if n == 64 else None
            print("full again", again, flush=True)
            out["full"].append(again)
            if n != levels[-1]:  # the next level's first sync removes its snapshots by tag
                shutil.rmtree(repo)
        if not levels:
            return _finish(out, a)
        fake.cmd(cmd="backing", volume=fake.info["volumes"][0], path=str(vol2))
        inc = timed_sync(repos / f"repo-{levels[-1]}", host, fake)
        ebs = sum(inc["calls"].get(k, 0) for k in EBS_CALLS)
        pages = inc["calls"].get("list_changed_blocks", 0)
        changed = inc["listed_blocks"]
        inc.update(
            ebs_calls=ebs,
            changed_blocks=changed,
            pages=pages,
            calls_per_gib_changed=round(ebs / max(changed * 512 * 1024 / GIB, 1e-9), 1),
            target_calls=round(1.05 * changed + pages, 1),
        )
        print("incremental", inc, flush=True)
        out["incremental"] = inc
    finally:
        fake.close()
        if out_repos is not None:  # a tmpfs holds them in memory: give it back
            shutil.rmtree(out_repos, ignore_errors=True)
    out["repos"] = str(out_repos or "the work directory")
    return _finish(out, a)


def _finish(out: dict[str, Any], a: argparse.Namespace) -> int:
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    bare64 = next((b["mb_s"] for b in out["bare"] if b["in_flight"] == 64), None)
    full64 = next((f["first_read_mb_s"] for f in out["full"] if f["in_flight"] == 64), None)
    src64 = next((f["mb_s"] for f in out["source"] if f["in_flight"] == 64), None)
    out["ratio_64"] = round(full64 / bare64, 2) if bare64 and full64 else None
    out["ratio_source_64"] = round(src64 / bare64, 2) if bare64 and src64 else None
    md = markdown(out)
    print(md)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    if a.doc:
        text = a.doc.read_text()
        begin, end = "<!-- aws:begin (benchmarks/bench_aws.py) -->", "<!-- aws:end -->"
        block = f"{begin}\n{md}\n{end}"
        if begin in text:
            text = re.sub(
                re.escape(begin) + ".*?" + re.escape(end), lambda _m: block, text, flags=re.S
            )
        else:
            text += f"\n## AWS source against the fake (issue 16)\n\n{block}\n"
        a.doc.write_text(text)
    return 0


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"Latency {out['latency_s'] * 1000:.0f} ms per request, fake on loopback in its own process; "
        f"peak RSS of the syncing process {out['peak_rss_mib']} MiB; repositories (codec none) "
        f"in {out.get('repos', 'the work directory')}.",
        "",
        "| in flight | bare GetSnapshotBlock loop MB/s | source alone MB/s | first full sync MB/s | full sync again MB/s |",
        "|---|---|---|---|---|",
    ]
    full = {f["in_flight"]: f for f in out["full"]}
    alone = {f["in_flight"]: f for f in out["source"]}
    for b in out["bare"]:
        f = full.get(b["in_flight"])
        src = alone.get(b["in_flight"])
        again = f"{f['read_mb_s']} ({f['read_bytes'] / GIB:.2f} GiB)" if f else "—"
        first = f["first_read_mb_s"] if f else "—"
        lines.append(
            f"| {b['in_flight']} | {b['mb_s']} | {src['mb_s'] if src else '—'} | {first} | {again} |"
        )
    rows = [("bare loop", b) for b in out["bare"] if b["in_flight"] == 64]
    rows += [("source alone", f) for f in out["source"] if f["in_flight"] == 64]
    rows += [("first full sync", f["first"]) for f in out["full"] if f.get("first")]
    rows += [("full sync again", f) for f in out["full"] if f["in_flight"] == 64]
    if rows:
        lines += [
            "",
            "CPU per MiB moved at 64 in flight (ms; the fake and the syncing process share the box):",
            "",
            "| run | syncing process | fake | sum |",
            "|---|---|---|---|",
        ]
        for name, r in rows:
            c = r.get("cpu_ms_per_mib") or {}
            if c:
                total_ms = round(c["client"] + c["fake"], 2)
                lines.append(f"| {name} | {c['client']} | {c['fake']} | {total_ms} |")
    inc = out.get("incremental")
    if inc:
        lines += [
            "",
            f"Ratio at 64 in flight, first full sync / bare loop: **{out['ratio_64']}** "
            f"(target ≥ 0.8); source alone / bare loop: **{out['ratio_source_64']}**.",
            "",
            f"Incremental ({inc['mode']}): {inc['changed_blocks']} changed 512 KiB blocks, "
            f"{inc['pages']} ListChangedBlocks pages, **{inc['ebs_calls']} EBS calls** "
            f"(target ≤ {inc['target_calls']}), {inc['calls_per_gib_changed']} calls per GiB changed, "
            f"{inc['read_bytes'] / MIB:.0f} MiB read; all calls: {inc['calls']}.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
