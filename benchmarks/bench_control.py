"""Scale benchmark of the control plane (issue 6).

    .venv/bin/python benchmarks/bench_control.py [--hosts 1000] [--rpo 300]
        [--duration 660] [--clients 50] [--client-rate 1] [--worker-nodes 1]
        [--json out.json]

Starts a throw-away PostgreSQL, one API node (`openbdr server --workers 0
--no-scheduler`) and one or more worker nodes (embedded workers; one of them leads
the scheduler) on the same catalog, adds N hosts backed by a fast synthetic source
(2 MiB disks that change by a known rule), each with an RPO target, and measures:

- time until every host has its first restore point, then the largest restore-point
  age reached over the rest of the run (from every finished sync, not only samples);
- API latency (p50/p95/p99) with C concurrent clients reading host pages, host lists,
  job lists, point lists and the overview: paced (each client R requests/s on a fixed
  schedule, latency from the scheduled instant), then saturated (back to back:
  throughput, and latencies that Little's law makes 50 / throughput);
- peak resident memory of each server process.

docs/benchmarks.md explains the method. The hosts use the source type `synthetic`
(`capture/synthetic.py`, shared with the tests' conformance suite).
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


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
    """Resident memory of a process and its children (a server with --processes)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += rss_kib(int(child))
    except OSError:
        pass
    return total


def start_server(data: Path, db: str, port: int, extra: list[str], log: Path) -> Any:
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


def request_for(rnd: random.Random, hosts: int) -> tuple[str, dict[str, Any] | None]:
    host = f"h{rnd.randrange(hosts):05d}"
    return rnd.choice([
        (f"/hosts/{host}", None),
        ("/hosts", {"limit": 50, "offset": rnd.randrange(hosts)}),
        ("/jobs", {"limit": 20}),
        ("/points", {"host": host, "limit": 20}),
        ("/overview", None),
    ])


#: seconds of load before the counted phase
WARMUP = 10.0


def run_clients(url: str, headers: dict[str, str], hosts: int, clients: int,
                seconds: float, rate: float, warmup: float = WARMUP) -> dict[str, Any]:
    """`clients` threads for `warmup` + `seconds`; what the first `warmup` seconds send is
    not counted (each server process's first requests of a kind compile their SQL; a server
    in service runs warm). rate > 0: each sends `rate` requests/s on a fixed schedule and a
    latency counts from the scheduled instant, so a slow server cannot hide its queue by
    delaying the next request. rate 0: back to back (saturation)."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    # every client is built and has its connection before the clock starts: building 50
    # httpx clients (an SSL context each) took the load generator's CPU for seconds, and
    # that start-up showed as the server's latency
    ready = threading.Barrier(clients + 1)
    window: list[float] = []

    def loop(seed: int) -> None:
        rnd = random.Random(seed)
        period = 1.0 / rate if rate > 0 else 0.0
        with httpx.Client(base_url=url + "/api/v1", headers=headers, timeout=60) as cc:
            cc.get("/health")
            ready.wait()
            stop = window[1]
            due = window[0] + rnd.random() * period
            while due < stop:
                if period:
                    time.sleep(max(0.0, due - time.monotonic()))
                start = due if period else time.monotonic()
                path, params = request_for(rnd, hosts)
                try:
                    ok = cc.get(path, params=params).status_code == 200
                except httpx.HTTPError:  # a timeout counts, with its latency
                    ok = False
                if start >= counted:
                    latencies.append(time.monotonic() - start)
                    if not ok:
                        errors[0] += 1
                due = due + period if period else time.monotonic()

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    began = time.monotonic()
    counted = began + warmup
    window[:] = [began, counted + seconds]
    ready.wait()
    for t in threads:
        t.join(timeout=warmup + seconds + 120)
    took = time.monotonic() - counted
    lat = sorted(latencies)

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

    return {
        "clients": clients, "rate_per_client": rate or None, "seconds": round(took, 1),
        "requests": len(lat), "errors": errors[0],
        "throughput_rps": round(len(lat) / took, 1) if took else None,
        "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
        "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
    }


def age_sample(db: str, rpo: int) -> dict[str, Any]:
    """Restore-point ages straight from the catalog (no API request to skew the load)."""
    import psycopg

    with psycopg.connect(db) as conn:
        n, worst, breached = conn.execute(
            "SELECT count(*), max(age), count(*) FILTER (WHERE age > %s) FROM ("
            " SELECT extract(epoch FROM now() - max(created)) AS age"
            " FROM points GROUP BY host_id) x", (rpo,)).fetchone() or (0, None, 0)
    return {"protected": int(n), "max_age": round(float(worst), 1) if worst is not None else None,
            "breached": int(breached or 0)}


def exact_ages(db: str, since: datetime, until: datetime, rpo: int) -> dict[str, Any]:
    """The largest age each host reached in [since, until], from every finished sync:
    just before a point lands in the catalog (its job's finish), the host's age is that
    instant minus the previous point's creation. Sampling would miss these peaks."""
    import psycopg

    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT host_id, finished, (result::jsonb)->'point'->>'created' FROM jobs"
            " WHERE kind = 'sync' AND state = 'succeeded' AND result::jsonb ? 'point'"
            " ORDER BY host_id, finished").fetchall()
    prev: dict[int, datetime] = {}
    worst = 0.0
    late = 0
    hosts_late: set[int] = set()
    for host, finished, created in rows:
        made = datetime.fromisoformat(created)
        made = made if made.tzinfo else made.replace(tzinfo=UTC)
        if host in prev and since <= finished <= until:
            age = (finished - prev[host]).total_seconds()
            worst = max(worst, age)
            if age > rpo:
                late += 1
                hosts_late.add(host)
        prev[host] = made
    for host, made in prev.items():  # each host's age at the end
        age = (until - made).total_seconds()
        worst = max(worst, age)
        if age > rpo:
            hosts_late.add(host)
    return {"max_age_s": round(worst, 1), "late_points": late, "hosts_breached": len(hosts_late)}


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--rpo", type=int, default=300)
    ap.add_argument("--duration", type=float, default=660.0)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--client-rate", type=float, default=1.0,
                    help="requests/s of each client in the paced phase")
    ap.add_argument("--load-seconds", type=float, default=60.0,
                    help="length of each load phase (paced, then saturated)")
    ap.add_argument("--workers", type=int, default=6, help="embedded workers per worker node")
    ap.add_argument("--worker-nodes", type=int, default=1,
                    help="worker server processes on the catalog (one leads the scheduler)")
    ap.add_argument("--api-processes", type=int, default=1,
                    help="processes of the API node (`openbdr server --processes`)")
    ap.add_argument("--repo-dir", type=Path, default=Path("/dev/shm"),
                    help="where the repository goes (tmpfs: measure the control plane, "
                    "not the disk's fsync latency)")
    ap.add_argument("--logs", type=Path, help="keep the servers' logs in this directory")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="openbdr-bench-control-"))
    procs: list[subprocess.Popen[bytes]] = []
    repo = Path(tempfile.mkdtemp(prefix="openbdr-bench-repo-", dir=args.repo_dir))
    try:
        db = start_postgres(base)
        api_data = base / "api"
        api_port = free_port()
        procs.append(start_server(api_data, db, api_port,
                                  ["--workers", "0", "--no-scheduler",
                                   "--processes", str(args.api_processes)], base / "api.log"))
        url = f"http://127.0.0.1:{api_port}"
        wait_health(url)
        for k in range(args.worker_nodes):
            work_data, work_port = base / f"worker{k}", free_port()
            work_data.mkdir(mode=0o700)
            shutil.copy(api_data / "server.key", work_data / "server.key")
            procs.append(start_server(work_data, db, work_port,
                                      ["--workers", str(args.workers), "--tick", "5"],
                                      base / f"worker{k}.log"))
            wait_health(f"http://127.0.0.1:{work_port}")
        token = (api_data / "admin.token").read_text().strip()
        h = {"Authorization": f"Bearer {token}"}
        c = httpx.Client(base_url=url + "/api/v1", headers=h, timeout=60)
        c.post("/targets", json={"name": "dr", "url": str(repo), "init": True}).raise_for_status()
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

        peak: dict[int, int] = {}
        samples: list[dict[str, Any]] = []
        first_all: float | None = None
        steady_from: datetime | None = None
        load: dict[str, Any] = {}
        loader: threading.Thread | None = None

        def load_phases() -> None:
            load["paced"] = run_clients(url, h, args.hosts, args.clients, args.load_seconds,
                                        args.client_rate)
            print(json.dumps({"paced": load["paced"]}), flush=True)
            load["saturated"] = run_clients(url, h, args.hosts, args.clients,
                                            args.load_seconds, 0.0)
            print(json.dumps({"saturated": load["saturated"]}), flush=True)

        while time.monotonic() - t0 < args.duration:
            time.sleep(10)
            for p in procs:
                peak[p.pid] = max(peak.get(p.pid, 0), rss_kib(p.pid))
            elapsed = time.monotonic() - t0
            sample = {"t": round(elapsed), **age_sample(db, args.rpo)}
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            if first_all is None and sample["protected"] == args.hosts:
                first_all = elapsed
                steady_from = datetime.now(UTC)
                loader = threading.Thread(target=load_phases, daemon=True)
                loader.start()
        if loader is not None:
            loader.join()
        until = datetime.now(UTC)
        steady = [s for s in samples if first_all is not None and s["t"] > first_all]
        rss = [round(peak.get(p.pid, 0) / 1024, 1) for p in procs]
        result = {
            "hosts": args.hosts,
            "rpo_seconds": args.rpo,
            "duration_s": args.duration,
            "workers": args.workers,
            "worker_nodes": args.worker_nodes,
            "api_processes": args.api_processes,
            "hosts_added_s": round(added, 1),
            "all_protected_after_s": round(first_all, 1) if first_all else None,
            "steady_sampled_max_age_s": max((s["max_age"] for s in steady), default=None),
            "steady_sampled_breaches": sum(s["breached"] for s in steady),
            "steady": exact_ages(db, steady_from, until, args.rpo) if steady_from else None,
            **load,
            "api_rss_peak_mib": rss[0],
            "worker_rss_peak_mib": rss[1:],
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
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in base.glob("*.log"):
                shutil.copy(log, args.logs / log.name)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
