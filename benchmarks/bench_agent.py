"""Benchmark of the Linux agent (issue 5) on the shared corpus under a live pgbench load.

    .venv/bin/python benchmarks/bench_agent.py [--workdir DIR] [--json out.json]
                                               [--runs 3] [--seconds 30] [--syncs 6]

A copy of the corpus disk (../shared/bench, reused from .work/bench) is loop-mounted
read-write (its ext4 partition), PostgreSQL 15 starts on the corpus's database (pgbench
scale 40) and then:

(a) overhead: pgbench TPS with change tracking on and off, alternating runs of the same
    length in one run (`--runs` pairs, the order swapped every pair);
(b) freeze window: under a continuous pgbench load, a full sync and `--syncs` incremental
    syncs; each sync's final FIFREEZE window (as recorded in the restore point);
(c) incremental vs hash-compare: the agent's tracking state is then dropped, so the next
    sync is a hash-compare resync of the same disk under the same load; its wall time
    against the incremental syncs' median.

The page cache is dropped before every measured sync (`--cache cold`), alike for all.
Needs root (loop devices, mounts, tracefs, FIFREEZE, dropping the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corpus import PART_OFFSET, ROOT, ensure_corpus
from measure import DROP_CACHES, BenchError

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.agent.pg import Cluster

from openbdr.capture.linux.source import AgentHost, DiskSpec
from openbdr.chunk import Codec
from openbdr.store.repository import Repository
from openbdr.sync import SyncOptions, sync

DEFAULT_WORKDIR = ROOT / ".work" / "bench-agent"
CORPUS = ROOT / ".work" / "bench"
MIB = 1 << 20
TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="scratch directory")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="corpus directory (reused)")
    p.add_argument("--json", type=Path, help="write all results as JSON here")
    p.add_argument("--runs", type=int, default=3, help="pgbench runs per mode (on, off)")
    p.add_argument("--seconds", type=int, default=30, help="length of one pgbench run")
    p.add_argument("--clients", type=int, default=2, help="pgbench clients")
    p.add_argument("--syncs", type=int, default=6, help="incremental syncs under load")
    p.add_argument("--gap", type=float, default=10.0, help="seconds between syncs")
    p.add_argument("--cache", choices=("cold", "warm"), default="cold")
    return p.parse_args(argv)


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@contextmanager
def partition(image: Path, mnt: Path) -> Iterator[str]:
    """The image's ext4 partition on its own read-write loop device, mounted at `mnt`."""
    dev = run(["losetup", "-f", "--show", "-o", str(PART_OFFSET), str(image)]).strip()
    try:
        mnt.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "ext4", dev, str(mnt)])
        try:
            yield dev
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def pgbench(pg: Cluster, clients: int, seconds: int) -> float:
    proc = pg.pgbench(clients=clients, seconds=seconds)
    out, err = proc.communicate(timeout=seconds + 300)
    m = TPS.search(out)
    if proc.returncode != 0 or m is None:
        raise BenchError(f"pgbench exited {proc.returncode}: {err.strip()[-500:]}")
    return float(m.group(1))


@dataclass
class SyncResult:
    kind: str  # full, incremental, hash-compare
    mode: str  # as the engine recorded it
    seconds: float
    freeze_s: list[float]
    device_read_bytes: int
    stored_bytes: int
    valid_bytes: int
    fallback_reason: str | None = None

    @property
    def final_freeze(self) -> float:
        return self.freeze_s[-1] if self.freeze_s else 0.0


@dataclass
class Results:
    started: str
    machine: dict[str, Any]
    config: dict[str, Any]
    tps_on: list[float] = field(default_factory=list)
    tps_off: list[float] = field(default_factory=list)
    syncs: list[SyncResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        inc = [s for s in self.syncs if s.kind == "incremental"]
        hc = [s for s in self.syncs if s.kind == "hash-compare"]
        on, off = statistics.mean(self.tps_on), statistics.mean(self.tps_off)
        inc_t = statistics.median(s.seconds for s in inc) if inc else None
        out: dict[str, Any] = {
            "tps_on_mean": round(on, 1),
            "tps_off_mean": round(off, 1),
            "tps_drop_pct": round(100 * (off - on) / off, 2),
            "freeze_median_s": round(statistics.median(s.final_freeze for s in inc), 4)
            if inc
            else None,
            "freeze_max_s": round(max(s.final_freeze for s in inc), 4) if inc else None,
            "incremental_median_s": None if inc_t is None else round(inc_t, 2),
            "hash_compare_s": round(hc[0].seconds, 2) if hc else None,
        }
        if inc_t is not None and hc:
            out["incremental_vs_hash_compare"] = round(inc_t / hc[0].seconds, 4)
        return out


class Bench:
    def __init__(self, args: argparse.Namespace, pg: Cluster, dev: str, top: Path) -> None:
        self.args = args
        self.pg = pg
        self.dev = dev
        self.state = top / "state"
        self.repo = Repository.init(str(top / "repo"))
        self.host = AgentHost("bench", [DiskSpec("disk0", dev)], self.state)

    def tracking(self, on: bool) -> None:
        if on:
            self.host.start()
            return
        trackers = list(self.host.trackers.values())
        self.host.stop()
        for tr in trackers:  # tracepoints off: nothing is left recording in the kernel
            tr.release()

    def overhead(self, res: Results) -> None:
        a = self.args
        warm = pgbench(self.pg, a.clients, a.seconds)  # caches and checkpoints settle first
        print(f"  pgbench warm-up (not counted): {warm:.1f} TPS")
        for i in range(a.runs):
            for on in (True, False) if i % 2 == 0 else (False, True):
                self.tracking(on)
                tps = pgbench(self.pg, a.clients, a.seconds)
                (res.tps_on if on else res.tps_off).append(tps)
                print(f"  pgbench run {i + 1} tracking {'on ' if on else 'off'}: {tps:.1f} TPS")
                if on:
                    self.tracking(False)

    def one_sync(self, kind: str) -> SyncResult:
        os.sync()
        if self.args.cache == "cold":
            DROP_CACHES.write_text("3\n")
        t0 = time.monotonic()
        point = sync(self.repo, self.host, SyncOptions(compression=Codec.ZSTD))
        dt = time.monotonic() - t0
        d = point.disks[0]
        cap = (((point.token or {}).get("value") or {}).get("disk0") or {}).get("value", {})
        cap = cap.get("capture", {})
        r = SyncResult(
            kind=kind,
            mode=d.mode,
            seconds=round(dt, 3),
            freeze_s=[f["seconds"] for f in cap.get("freezes", [])],
            device_read_bytes=int(cap.get("device_read_bytes", 0)),
            stored_bytes=d.stored_bytes,
            valid_bytes=d.valid_bytes,
            fallback_reason=d.fallback_reason,
        )
        print(
            f"  {kind:12} mode={r.mode:12} {dt:7.2f} s  freeze {r.freeze_s}  "
            f"read {r.device_read_bytes / MIB:.0f} MiB of valid {r.valid_bytes / MIB:.0f} MiB"
        )
        return r

    def syncs(self, res: Results) -> None:
        a = self.args
        self.tracking(True)
        load = self.pg.pgbench(clients=a.clients, seconds=24 * 3600)
        try:
            res.syncs.append(self.one_sync("full"))
            for _ in range(a.syncs):
                time.sleep(a.gap)
                res.syncs.append(self.one_sync("incremental"))
            # the tracking state is lost (as after a crash): the next sync cannot trust it
            self.tracking(False)
            self.tracking(True)
            time.sleep(a.gap)
            res.syncs.append(self.one_sync("hash-compare"))
        finally:
            load.terminate()
            load.wait(60)
            self.tracking(False)
        bad = [s for s in res.syncs[1:-1] if s.mode != "incremental"]
        if bad or res.syncs[-1].mode != "hash-compare":
            raise BenchError(f"unexpected sync modes: {[s.mode for s in res.syncs]}")


def machine() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
    }


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("bench_agent needs root (loop devices, tracefs, FIFREEZE)", file=sys.stderr)
        return 2
    corpus = ensure_corpus(a.corpus)
    top = a.workdir / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    top.mkdir(parents=True)
    os.chmod(top, 0o755)
    res = Results(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine(),
        config={k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
    )
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, top, True)
        img = top / "disk.img"
        print(f"copying {corpus.disk} → {img} …", flush=True)
        run(["cp", "--sparse=always", str(corpus.disk), str(img)])
        dev = stack.enter_context(partition(img, top / "mnt"))
        pg = Cluster(top / "mnt" / "pg" / "data", top / "sock")
        pg.start()
        stack.callback(pg.stop, "fast")
        bench = Bench(a, pg, dev, top)
        stack.callback(bench.tracking, False)
        threading.current_thread().name = "bench"
        print(f"(a) pgbench -c {a.clients} -T {a.seconds}, tracking on/off × {a.runs}", flush=True)
        bench.overhead(res)
        print(f"(b, c) full + {a.syncs} incremental + 1 hash-compare sync under load", flush=True)
        bench.syncs(res)
    summary = res.summary()
    print(json.dumps(summary, indent=1))
    if a.json:
        data = asdict(res) | {"summary": summary}
        a.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
