"""Scale benchmark of the control plane (issue 6).

    .venv/bin/python benchmarks/bench_control.py [--hosts 1000] [--rpo 300]
        [--duration 660] [--clients 50] [--json out.json]

Starts a throw-away PostgreSQL, one API node (`openbdr server --workers 0
--no-scheduler`) and one worker node (embedded workers + scheduler) on the same
catalog, adds N hosts backed by a fast synthetic source (2 MiB disks, one changed
block per snapshot), each with an RPO target, and measures:

- time until every host has its first restore point, then the largest restore-point
  age seen over the rest of the run against the target (and breaches);
- API latency (p50/p95/p99) with C concurrent clients reading host pages, host lists,
  job lists, point lists and the overview;
- peak resident memory of each server process.

The synthetic source is registered through `OPENBDR_PLUGINS=bench_control` (this
module, importable from the servers with PYTHONPATH=benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from openbdr.blocks import BLOCK_SIZE
from openbdr.capture.base import ChangeToken, DiskSnapshot, Host, Snapshot
from openbdr.control.registry import SourceType, register_source
from openbdr.extents import Extent

ROOT = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# -- the synthetic source -------------------------------------------------------------
class SynthDisk(DiskSnapshot):
    """`blocks` MiB; snapshot generation g changes block g mod blocks."""

    def __init__(self, host: str, blocks: int, gen: int, incremental: bool) -> None:
        self.name = "disk0"
        self.host = host
        self.blocks = blocks
        self.size = blocks * BLOCK_SIZE
        self.gen = gen
        self.incremental = incremental

    def extents(self) -> list[Extent]:
        if self.incremental:
            return [Extent((self.gen % self.blocks) * BLOCK_SIZE, BLOCK_SIZE)]
        return [Extent(0, self.size)]

    def _version(self, block: int) -> int:
        last = self.gen - ((self.gen - block) % self.blocks)
        return max(last, 0)

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        view = memoryview(buf)
        n = min(len(view), self.size - offset)
        pos = 0
        while pos < n:
            block = (offset + pos) // BLOCK_SIZE
            end = min(n, (block + 1) * BLOCK_SIZE - offset)
            pattern = f"{self.host}:{block}:{self._version(block)};".encode() * 64
            span = end - pos
            reps = pattern * (span // len(pattern) + 1)
            view[pos:end] = reps[:span]
            pos = end
        return n

    @property
    def token(self) -> ChangeToken:
        return ChangeToken("synthetic", {"gen": self.gen})

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "gen": self.gen}


class SynthSnapshot(Snapshot):
    def __init__(self, disks: list[DiskSnapshot]) -> None:
        self.disks = disks
        self.consistency = "crash"


class SynthHost(Host):
    def __init__(self, name: str, blocks: int) -> None:
        self.name = name
        self.blocks = blocks

    def snapshot(self, since: ChangeToken | None) -> Snapshot:
        gen = (
            int((since.value.get("disk0") or {}).get("value", {}).get("gen", 0)) + 1 if since else 1
        )
        return SynthSnapshot([SynthDisk(self.name, self.blocks, gen, since is not None)])

    def describe(self) -> str:
        return "synthetic"


def _open(name: str, spec: dict[str, Any]) -> Host:
    return SynthHost(name, int(spec.get("blocks", 2)))


register_source(
    SourceType(
        "synthetic",
        _open,
        lambda spec: None,
        "benchmark source: N MiB, one changed block per snapshot",
        {"blocks": "int"},
    )
)


# -- harness --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def start_postgres(base: Path) -> str:
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        as_postgres(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(base / "pg"),
                "-U",
                "openbdr",
                "--auth=trust",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c max_connections=300"
    subprocess.run(
        as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(base / "pg"),
                "-w",
                "-l",
                str(base / "pg.log"),
                "-o",
                opts,
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    import psycopg

    with psycopg.connect(
        f"postgresql://openbdr@127.0.0.1:{port}/postgres", autocommit=True
    ) as conn:
        conn.execute("CREATE DATABASE bench")
    return f"postgresql://openbdr@127.0.0.1:{port}/bench"


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_server(data: Path, db: str, port: int, extra: list[str], log: Path) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks"), "OPENBDR_PLUGINS": "bench_control"}
    return subprocess.Popen(
        [
            str(ROOT / ".venv/bin/openbdr"),
            "server",
            "--data",
            str(data),
            "--database",
            db,
            "--listen",
            f"127.0.0.1:{port}",
            *extra,
        ],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def wait_health(url: str) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server at {url} did not start")


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--rpo", type=int, default=300)
    ap.add_argument("--duration", type=float, default=660.0)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--load-seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--repo-dir", type=Path, default=Path("/dev/shm"),
                    help="where the repository goes (tmpfs: measure the control plane, "
                    "not the disk's fsync latency)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="openbdr-bench-control-"))
    procs: list[subprocess.Popen[bytes]] = []
    repo: Path | None = None
    try:
        db = start_postgres(base)
        api_data, work_data = base / "api", base / "worker"
        api_port, work_port = free_port(), free_port()
        procs.append(
            start_server(
                api_data, db, api_port, ["--workers", "0", "--no-scheduler"], base / "api.log"
            )
        )
        url = f"http://127.0.0.1:{api_port}"
        wait_health(url)
        work_data.mkdir(mode=0o700)
        shutil.copy(api_data / "server.key", work_data / "server.key")
        procs.append(
            start_server(
                work_data,
                db,
                work_port,
                ["--workers", str(args.workers), "--tick", "5"],
                base / "worker.log",
            )
        )
        wait_health(f"http://127.0.0.1:{work_port}")
        token = (api_data / "admin.token").read_text().strip()
        h = {"Authorization": f"Bearer {token}"}
        c = httpx.Client(base_url=url + "/api/v1", headers=h, timeout=60)
        c.post(
            "/targets", json={"name": "dr", "url": str(base / "repo"), "init": True}
        ).raise_for_status()
        c.post(
            "/policies", json={"name": "p", "rpo_seconds": args.rpo, "compression": "zstd"}
        ).raise_for_status()
        t0 = time.monotonic()
        for i in range(args.hosts):
            c.post(
                "/hosts",
                json={
                    "name": f"h{i:05d}",
                    "target": "dr",
                    "policy": "p",
                    "source": {"type": "synthetic", "blocks": 2},
                },
            ).raise_for_status()
        added = time.monotonic() - t0
        print(f"added {args.hosts} hosts in {added:.1f} s", flush=True)

        peak = {"api": 0, "worker": 0}
        samples: list[dict[str, Any]] = []
        first_all: float | None = None
        latencies: list[float] = []
        errors = [0]
        stop_load = threading.Event()

        def client_loop(seed: int) -> None:
            rnd = random.Random(seed)
            with httpx.Client(base_url=url + "/api/v1", headers=h, timeout=60) as cc:
                while not stop_load.is_set():
                    host = f"h{rnd.randrange(args.hosts):05d}"
                    path, params = rnd.choice(
                        [
                            (f"/hosts/{host}", None),
                            ("/hosts", {"limit": 50, "offset": rnd.randrange(args.hosts)}),
                            ("/jobs", {"limit": 20}),
                            ("/points", {"host": host, "limit": 20}),
                            ("/overview", None),
                        ]
                    )
                    t = time.perf_counter()
                    r = cc.get(path, params=params)
                    latencies.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        errors[0] += 1

        load_started: float | None = None
        load_threads: list[threading.Thread] = []
        while time.monotonic() - t0 < args.duration:
            time.sleep(10)
            peak["api"] = max(peak["api"], rss_kib(procs[0].pid))
            peak["worker"] = max(peak["worker"], rss_kib(procs[1].pid))
            hosts = c.get("/hosts", params={"limit": 10000}).json()
            ages = [
                hh["status"]["last_point"]["age_seconds"]
                for hh in hosts
                if hh["status"]["last_point"]
            ]
            elapsed = time.monotonic() - t0
            sample = {
                "t": round(elapsed),
                "protected": len(ages),
                "max_age": max(ages) if ages else None,
                "breached": sum(1 for a in ages if a > args.rpo),
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            if first_all is None and len(ages) == args.hosts:
                first_all = elapsed
            if first_all is not None and load_started is None:
                load_started = time.monotonic()
                load_threads = [
                    threading.Thread(target=client_loop, args=(k,), daemon=True)
                    for k in range(args.clients)
                ]
                for t in load_threads:
                    t.start()
            if load_started is not None and time.monotonic() - load_started > args.load_seconds:
                stop_load.set()
        stop_load.set()
        for t in load_threads:
            t.join(timeout=60)
        steady = [s for s in samples if first_all is not None and s["t"] > first_all]
        lat = sorted(latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

        result = {
            "hosts": args.hosts,
            "rpo_seconds": args.rpo,
            "duration_s": args.duration,
            "workers": args.workers,
            "hosts_added_s": round(added, 1),
            "all_protected_after_s": round(first_all, 1) if first_all else None,
            "steady_max_age_s": max((s["max_age"] for s in steady), default=None),
            "steady_breaches": sum(s["breached"] for s in steady),
            "api_requests": len(lat),
            "api_errors": errors[0],
            "clients": args.clients,
            "api_p50_ms": pct(0.50),
            "api_p95_ms": pct(0.95),
            "api_p99_ms": pct(0.99),
            "api_mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
            "api_rss_peak_mib": round(peak["api"] / 1024, 1),
            "worker_rss_peak_mib": round(peak["worker"] / 1024, 1),
            "jobs": c.get("/overview").json()["jobs"],
        }
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps({**result, "samples": samples}, indent=1))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(
            as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(base / "pg"), "-m", "immediate", "stop"]
            ),
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)
        if repo is not None:
            shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
