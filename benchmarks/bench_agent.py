"""Benchmark of the Linux agent (issue 5) on the shared corpus under a live pgbench load.

    .venv/bin/python benchmarks/bench_agent.py [--workdir DIR] [--json out.json]
                                               [--only overhead|syncs] [--runs 10]
                                               [--seconds 30] [--syncs 6]

A copy of the corpus disk (../shared/bench, reused from .work/bench) is loop-mounted
read-write (its ext4 partition), PostgreSQL 15 starts on the corpus's database (pgbench
scale 40) and then:

(a) overhead: pgbench TPS with change tracking on and off, alternating runs of the same
    length in one run (`--runs` pairs, the order swapped every pair, a CHECKPOINT before
    each run); mean, stdev and the per-pair differences, and the tracker's own CPU time;
(b) freeze window: under a continuous pgbench load, a full sync and `--syncs` incremental
    syncs; each sync's final FIFREEZE window (as recorded in the restore point);
(c) incremental vs hash-compare: the agent's tracking state is then dropped, so the next
    sync is a hash-compare resync of the same disk under the same load (`--hash-compares`
    times, dropped before each); their median wall time against the incremental syncs'
    median. Each incremental's device reads are set against
    the blocks written since the previous sync ended, counted by an independent tracefs
    instance (tests/agent/tracing.py).

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
from tests.agent.tracing import WriteCounter, thawed

from openbdr.capture.linux.source import AgentHost, CaptureOptions, DiskSpec
from openbdr.chunk import Codec
from openbdr.store.target import init_target
from openbdr.sync import SyncOptions, SyncRun, disk_capture

DEFAULT_WORKDIR = ROOT / ".work" / "bench-agent"
CORPUS = ROOT / ".work" / "bench"
MIB = 1 << 20
TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="scratch directory")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="corpus directory (reused)")
    p.add_argument("--json", type=Path, help="write all results as JSON here")
    p.add_argument("--only", choices=("overhead", "syncs"), help="run only this part")
    p.add_argument("--runs", type=int, default=10, help="pgbench pairs (tracking on, off)")
    p.add_argument("--seconds", type=int, default=30, help="length of one pgbench run")
    p.add_argument("--clients", type=int, default=2, help="pgbench clients")
    p.add_argument("--syncs", type=int, default=6, help="incremental syncs under load")
    p.add_argument("--gap", type=float, default=10.0, help="seconds between syncs")
    p.add_argument("--hash-compares", type=int, default=1,
                   help="hash-compare resyncs after the incrementals (their median is used; "
                        "repeats read faster here, from the hypervisor's cache)")
    p.add_argument("--cache", choices=("cold", "warm"), default="cold")
    d = CaptureOptions()
    p.add_argument("--max-passes", type=int, default=d.max_passes, help="live passes at most")
    p.add_argument("--freeze-copy-blocks", type=int, default=d.freeze_copy_blocks,
                   help="MiB the frozen pass should copy at most")
    p.add_argument("--stage-blocks", type=int, default=d.stage_blocks,
                   help="incrementals up to this many MiB are staged first (0: engine reads)")
    p.add_argument("--stage-memory", type=int, default=d.stage_memory >> 20,
                   help="MiB of staged blocks kept in memory (0: all in the state directory)")
    p.add_argument("--stage-keep", type=float, default=d.stage_keep,
                   help="seconds staging memory is kept for the next sync (0: freed at once)")
    p.add_argument("--threads", type=int, default=SyncOptions().threads,
                   help="sync engine workers (the agent's default)")
    return p.parse_args(argv)


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@contextmanager
def partition(image: Path, mnt: Path) -> Iterator[str]:
    """The image's ext4 partition on its own read-write loop device, mounted at `mnt`.

    Sized to the partition (`--sizelimit`): without it the device runs on to the end of
    the disk image and ends with the disk's backup GPT header."""
    table = json.loads(run(["sfdisk", "--json", str(image)]))["partitiontable"]
    part = next(p for p in table["partitions"] if int(p["start"]) * 512 == PART_OFFSET)
    size = int(part["size"]) * int(table.get("sectorsize", 512))
    dev = run(
        ["losetup", "-f", "--show", "-o", str(PART_OFFSET), "--sizelimit", str(size), str(image)]
    ).strip()
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
    #: 1 MiB blocks written since the previous sync ended, counted independently
    changed_bytes: int = 0
    passes: int = 0
    #: bytes each live pass and the frozen one copied
    pass_bytes: list[int] = field(default_factory=list)
    staged_bytes: int = 0
    #: seconds per phase of the sync engine (prepare, snapshot, first pass, settle, …)
    phases: dict[str, float] = field(default_factory=dict)
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
    #: CPU seconds of this process (the tracker's reader thread) per tracking-on run
    tracker_cpu_s: list[float] = field(default_factory=list)
    #: write events the tracker parsed per tracking-on run
    tracker_events: list[int] = field(default_factory=list)
    syncs: list[SyncResult] = field(default_factory=list)

    def overhead_summary(self) -> dict[str, Any]:
        if not self.tps_on or not self.tps_off:
            return {}
        on, off = self.tps_on, self.tps_off
        # pair i ran its two modes back to back: the fairest comparison this machine gives
        diffs = [100 * (b - a) / b for a, b in zip(on, off, strict=False)]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        return {
            "tps_on_mean": round(statistics.mean(on), 1),
            "tps_on_stdev": round(statistics.stdev(on), 1) if len(on) > 1 else 0.0,
            "tps_off_mean": round(statistics.mean(off), 1),
            "tps_off_stdev": round(statistics.stdev(off), 1) if len(off) > 1 else 0.0,
            "tps_drop_pct": round(100 * (statistics.mean(off) - statistics.mean(on))
                                  / statistics.mean(off), 2),
            "pair_drop_pct": [round(d, 2) for d in diffs],
            "pair_drop_mean_pct": round(statistics.mean(diffs), 2),
            "pair_drop_stdev_pct": round(sd, 2),
            # normal approximation; with 10 pairs Student's t would widen it by ~15 %
            "pair_drop_ci95_pct": round(1.96 * sd / len(diffs) ** 0.5, 2),
            "tracker_cpu_pct": round(100 * sum(self.tracker_cpu_s)
                                     / (len(self.tracker_cpu_s) * float(self.config["seconds"])),
                                     3) if self.tracker_cpu_s else None,
            "tracker_events_per_s": round(sum(self.tracker_events)
                                          / (len(self.tracker_events)
                                             * float(self.config["seconds"]))) if
            self.tracker_events else None,
        }

    def summary(self) -> dict[str, Any]:
        inc = [s for s in self.syncs if s.kind == "incremental"]
        hc = [s for s in self.syncs if s.kind == "hash-compare"]
        inc_t = statistics.median(s.seconds for s in inc) if inc else None
        # a pass over ~4.6 GiB varies by a third between runs; repeats get faster
        hc_t = statistics.median(s.seconds for s in hc) if hc else None
        out: dict[str, Any] = self.overhead_summary()
        out |= {
            "freeze_median_s": round(statistics.median(s.final_freeze for s in inc), 4)
            if inc
            else None,
            "freeze_max_s": round(max(s.final_freeze for s in inc), 4) if inc else None,
            "incremental_median_s": None if inc_t is None else round(inc_t, 2),
            "hash_compare_s": round(hc_t, 2) if hc_t else None,
            "hash_compare_each_s": [s.seconds for s in hc],
        }
        if inc_t is not None and hc_t:
            out["incremental_vs_hash_compare"] = round(inc_t / hc_t, 4)
        if inc:
            out["incremental_read_vs_changed"] = [
                round(s.device_read_bytes / s.changed_bytes, 2) if s.changed_bytes else None
                for s in inc
            ]
        return out


class Bench:
    def __init__(self, args: argparse.Namespace, pg: Cluster, dev: str, top: Path) -> None:
        self.args = args
        self.pg = pg
        self.dev = dev
        self.state = top / "state"
        self.repo = init_target(str(top / "repo"))
        opts = CaptureOptions(max_passes=args.max_passes,
                              freeze_copy_blocks=args.freeze_copy_blocks,
                              stage_blocks=args.stage_blocks,
                              stage_memory=args.stage_memory << 20,
                              stage_keep=args.stage_keep)
        self.host = AgentHost("bench", [DiskSpec("disk0", dev)], self.state, opts)

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
                self.pg.sql("CHECKPOINT")  # every run starts without dirty buffers
                self.tracking(on)
                cpu = time.process_time()
                tps = pgbench(self.pg, a.clients, a.seconds)
                cpu = time.process_time() - cpu
                (res.tps_on if on else res.tps_off).append(tps)
                line = f"  pgbench pair {i + 1} tracking {'on ' if on else 'off'}: {tps:.1f} TPS"
                if on:
                    events = sum(tr.events for tr in self.host.trackers.values())
                    res.tracker_cpu_s.append(round(cpu, 3))
                    res.tracker_events.append(events)
                    line += f" (tracker: {events} events, {cpu:.2f} s CPU)"
                    self.tracking(False)
                print(line, flush=True)

    def one_sync(self, kind: str, counter: WriteCounter) -> SyncResult:
        os.sync()
        if self.args.cache == "cold":
            DROP_CACHES.write_text("3\n")
        t0 = time.monotonic()
        run = SyncRun(self.repo, self.host, SyncOptions(compression=Codec.ZSTD, threads=self.args.threads))
        point = run.run()
        dt = time.monotonic() - t0
        d = point.disks[0]
        cap = disk_capture(point.token, "disk0")
        # the blocks written up to this capture's final cut (later ones are the next sync's)
        changed = len(counter.take(until=thawed(cap["freezes"]))) * MIB
        r = SyncResult(
            kind=kind,
            mode=d.mode,
            seconds=round(dt, 3),
            freeze_s=[f["seconds"] for f in cap.get("freezes", [])],
            device_read_bytes=int(cap.get("device_read_bytes", 0)),
            stored_bytes=d.stored_bytes,
            valid_bytes=d.valid_bytes,
            changed_bytes=changed,
            passes=int(cap.get("passes", 0)),
            pass_bytes=list(cap.get("pass_bytes", [])),
            staged_bytes=int(cap.get("staged_bytes", 0)),
            phases=dict(run.phases),
            fallback_reason=d.fallback_reason,
        )
        print(
            f"  {kind:12} mode={r.mode:12} {dt:7.2f} s  freeze {r.freeze_s}  "
            f"read {r.device_read_bytes / MIB:.0f} MiB (changed {changed / MIB:.0f} MiB, "
            f"valid {r.valid_bytes / MIB:.0f} MiB) in {r.passes} passes "
            f"{[round(b / MIB, 1) for b in r.pass_bytes]} MiB\n"
            f"               {r.phases}",
            flush=True,
        )
        return r

    def syncs(self, res: Results) -> None:
        a = self.args
        self.tracking(True)
        counter = WriteCounter(self.dev)
        load = self.pg.pgbench(clients=a.clients, seconds=24 * 3600)
        try:
            res.syncs.append(self.one_sync("full", counter))
            for _ in range(a.syncs):
                time.sleep(a.gap)
                res.syncs.append(self.one_sync("incremental", counter))
            for _ in range(a.hash_compares):
                # the tracking state is lost (as after a crash): the next sync cannot trust it
                self.tracking(False)
                self.tracking(True)
                time.sleep(a.gap)
                res.syncs.append(self.one_sync("hash-compare", counter))
        finally:
            counter.close()
            load.terminate()
            load.wait(60)
            self.tracking(False)
        bad = [s for s in res.syncs[1:] if s.mode != s.kind]
        if bad:
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
        if a.only in (None, "overhead"):
            print(f"(a) pgbench -c {a.clients} -T {a.seconds}, tracking on/off × {a.runs}",
                  flush=True)
            bench.overhead(res)
        if a.only in (None, "syncs"):
            print(f"(b, c) full + {a.syncs} incremental + {a.hash_compares} hash-compare "
                  "syncs under load",
                  flush=True)
            bench.syncs(res)
    summary = res.summary()
    print(json.dumps(summary, indent=1))
    if a.json:
        data = asdict(res) | {"summary": summary}
        a.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
