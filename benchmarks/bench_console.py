"""Console dashboard with 1,000 hosts in the catalog: API time and page load in Chromium.

    .venv/bin/python benchmarks/bench_console.py [--hosts 1000] [--points 10] [--runs 10]

Seeds a fresh SQLite catalog (hosts, a policy, restore points spread over the last day,
the sync job of each point, some drills and running syncs),
starts a real `openbdr server` on it (no scheduler, no workers), then measures
GET /api/v1/console/dashboard and a full dashboard load in Debian's Chromium (navigation
until every host's row is in the table and the frame showing them is painted). Prints
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from openbdr.control.app import ServerConfig, open_services
from openbdr.control.db import transaction
from openbdr.control.models import Host, Job, Point, Policy, Target, utcnow

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def seed(data: Path, hosts: int, points: int) -> None:
    svc = open_services(ServerConfig(data, workers=0, scheduler=False))
    now = utcnow()
    with transaction(svc.factory) as s:
        t = Target(name="dr", url=str(data.parent / "repo"))
        pol = Policy(name="gold", rpo_seconds=3600, compression="zstd", compression_level=1,
                     bwlimit=0, bandwidth_windows=[], retention={}, drill_plan={}, enabled=True)
        s.add_all([t, pol])
        s.flush()
        rows = [Host(name=f"host-{i:04d}", source={"type": "image", "paths": [f"/d/{i}.img"]},
                     target_id=t.id, policy_id=pol.id, disks=[], enabled=True)
                for i in range(hosts)]
        s.add_all(rows)
        s.flush()
        step = 86400 / points
        s.add_all([Point(host_id=h.id, point_id=f"p{k}", consistency="crash",
                         created=now - timedelta(seconds=step * k + (h.id % 600)),
                         size=8 << 30, read_bytes=(64 + h.id % 64) << 20,
                         stored_bytes=(32 + h.id % 32) << 20, codec="zstd")
                   for h in rows for k in range(points)])
        s.add_all(jobs(rows, points, step, now))
    svc.engine.dispose()


def jobs(hosts: list[Host], points: int, step: float, now: datetime) -> list[Job]:
    """The jobs such a catalog has: one finished sync per point (its result names the
    point, as a real sync's does), a drill for every fifth host, 2 % of hosts syncing."""
    out = []
    for h in hosts:
        for k in range(points):
            at = now - timedelta(seconds=step * k + (h.id % 600))
            out.append(Job(kind="sync", state="succeeded", host_id=h.id, target_id=h.target_id,
                           params={}, progress={"percent": 100.0, "total_bytes": 1 << 30},
                           result={"point": {"id": f"p{k}", "disks": [{"name": "disk0"}]},
                                   "adopted": False},
                           created=at - timedelta(seconds=60), started=at - timedelta(seconds=60),
                           finished=at))
        if h.id % 5 == 0:
            out.append(Job(kind="drill", state="succeeded", host_id=h.id, target_id=h.target_id,
                           params={}, progress={}, result={"verdict": "passed"},
                           created=now - timedelta(hours=2), finished=now - timedelta(hours=1)))
        if h.id % 50 == 0:
            out.append(Job(kind="sync", state="running", host_id=h.id, target_id=h.target_id,
                           params={}, result={}, created=now, started=now,
                           progress={"percent": 40.0, "total_bytes": 1 << 30,
                                     "done_bytes": 400 << 20, "rate": 50 << 20, "eta": 12.0}))
    return out


def free_port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return int(so.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="openbdr-bench-console-") as tmp:
        data = Path(tmp) / "data"
        seed(data, a.hosts, a.points)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "openbdr.cli", "server", "--data", str(data), "--listen",
             f"127.0.0.1:{port}", "--workers", "0", "--no-scheduler"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            token = ""
            for _ in range(600):
                try:
                    if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                        token = (data / "admin.token").read_text().strip()
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            headers = {"Authorization": f"Bearer {token}"}
            api_s = []
            with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
                c.get("/api/v1/console/dashboard").raise_for_status()  # warm
                for _ in range(a.runs):
                    t0 = time.perf_counter()
                    r = c.get("/api/v1/console/dashboard")
                    api_s.append(time.perf_counter() - t0)
                    r.raise_for_status()
                size = len(r.content)
                assert len(r.json()["hosts"]) == a.hosts
            split: list[tuple[float, float]] = []
            page_s = browser_loads(url, token, a.hosts, max(3, a.runs // 2), split)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print(json.dumps({
        "hosts": a.hosts, "points_per_host": a.points, "response_bytes": size,
        "api_median_s": round(statistics.median(api_s), 3), "api_max_s": round(max(api_s), 3),
        "page_median_s": round(statistics.median(page_s), 3), "page_max_s": round(max(page_s), 3),
        "page_until_data_median_s": round(statistics.median(x for x, _ in split), 3),
        "page_render_median_s": round(statistics.median(y for _, y in split), 3),
        "cpus": os.cpu_count(),
    }))


def browser_loads(url: str, token: str, hosts: int, runs: int,
                  split: list[tuple[float, float]]) -> list[float]:
    """Navigation start → every host row in the table and painted (the frame after they
    appeared), with the session already signed in;
    `split` gets (dashboard response received, rendering after it) per load."""
    from playwright.sync_api import sync_playwright

    out = []
    with tempfile.TemporaryDirectory(prefix="openbdr-chromium-") as profile, \
            sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium",
                                                    headless=True, args=ARGS)
        page = ctx.new_page()
        page.goto(url + "/console/favicon.svg")
        page.evaluate("t => sessionStorage.setItem('openbdr.token', t)", token)
        for i in range(runs + 1):
            page.goto(url + "/")
            page.wait_for_function(
                f"() => document.querySelectorAll('#hosts-table tr[data-host]').length === {hosts}",
                timeout=60_000)
            # then until the frame that lays out and paints them has been produced
            took = page.evaluate("new Promise(r => requestAnimationFrame(() => "
                                 "setTimeout(() => r(performance.now()))))") / 1000.0
            api_end = page.evaluate(
                "Math.max(...performance.getEntriesByType('resource')"
                ".filter(e => e.name.includes('/console/dashboard')).map(e => e.responseEnd))")
            if i:  # the first load fills the HTTP cache, as for a returning operator
                out.append(took)
                split.append((api_end / 1000.0, took - api_end / 1000.0))
        ctx.close()
    return out


if __name__ == "__main__":
    main()
