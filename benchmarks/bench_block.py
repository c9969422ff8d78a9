"""Block mode side by side (issue 13): gateway on loopback vs object mode vs the raw tools.

    .venv/bin/python benchmarks/bench_block.py [--workdir DIR] [--json out.json]
                                               [--only object,gw-file,gw-rbd,qemu-img,rbd-import]
                                               [--cache cold|warm] [--runs DIR]
                                               [--ceph-env FILE]

On the shared 8 GiB corpus (../shared/bench: disk.img, then disk2.img after a busy day),
for every contender a full sync of disk.img and an incremental one of disk2.img, zstd on:

- `object`: `openbdr sync` into an object repository in a directory;
- `gw-file`: `openbdr sync --repo gateway://…` into `openbdr gateway serve` on loopback
  writing local raw volumes with an undo journal;
- `gw-rbd`: the same gateway writing RBD images on the Ceph fixture (started in the workdir
  with a 24 GiB OSD; `--only` without it skips Ceph);
- `qemu-img`: `qemu-img convert -O qcow2` of the raw image (full only: it has no increment);
- `rbd-import`: `rbd import` of the raw image (full only).
- `drill` (with gw-rbd and/or gw-file): the bootable fixture built at 512 MiB and at 8 GiB
  (`make-bootable-disk --size`), each synced through the gateway, then `openbdr drill run`
  of its point (booted in place from the RBD snapshot; from local volumes over NBD), twice
  each: the time from the drill's start to the guest's ready line (`rto_first_s`). No
  restore precedes the boot, so the 8 GiB disk must boot as fast as the 512 MiB one.

Reported per step: wall time, CPU seconds of the sender's process tree and of the gateway
(its /proc counters before and after), peak RSS of both, bytes on the wire (the points'
`stored_bytes`: compressed) and bytes written (`written_bytes`: decompressed, block mode),
and the device I/O of the disk that holds the corpus (every process: with `--runs` on
another device, as a DR site's storage is, the source side's reads alone).
Each block-mode point is restored through the gateway and checked like a valid-data restore
of the core benchmark (fsck clean, every file equal; a difference fails the run). Needs root (corpus build, dropping the page cache). Targets:
gateway full sync <= 1.2x object mode's wall time; drill boot time 8 GiB / 512 MiB <= 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from corpus import ROOT, ensure_corpus, verify_same_files
from measure import BenchError, Cache, Usage, device_bytes, run_measured

sys.path.insert(0, str(ROOT / "src"))

OPENBDR = str(ROOT / ".venv" / "bin" / "openbdr")
CEPH = ROOT.parent / "shared" / "fixtures" / "ceph-cluster"
HOST = "bench"
MIB = 1 << 20
CONTENDERS = ("object", "gw-file", "gw-rbd", "qemu-img", "rbd-import", "drill")
MAKE_DISK = ROOT.parent / "shared" / "fixtures" / "make-bootable-disk"
DRILL_SIZES = ("512M", "8G")
DRILL_PLAN = """
[drill]
memory = 512
network = "none"
accel = "tcg"
fsck = false

[[probe]]
type = "console"
name = "guest ready"
pattern = "OPENBDR-GUEST-READY"
timeout = 300
"""


@dataclass
class Row:
    contender: str
    phase: str
    wall: float
    cpu_sender: float
    cpu_gateway: float
    rss_sender: int
    rss_gateway: int
    wire_bytes: int
    written_bytes: int
    check: str = ""
    #: bytes read + written by the disk under the runs during the step (every process: the
    #: source read, the volume or repository written, an OSD's own I/O)
    device_io: int = 0
    boot: float = 0.0  # drill rows: seconds from the drill's start to the guest's ready line


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Gateway:
    def __init__(self, root: Path, volumes: str, env: dict[str, str]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        token = root / "agent.token"
        subprocess.run(
            [OPENBDR, "gateway", "token", "add", "--root", str(root), "bench", "--out", str(token)],
            check=True,
            capture_output=True,
        )
        port_file = root / "port"
        self.proc = subprocess.Popen(
            [
                OPENBDR,
                "gateway",
                "serve",
                "--root",
                str(root),
                "--volumes",
                volumes,
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
            ],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=open(root / "gateway.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"gateway did not start: see {root / 'gateway.log'}")
            time.sleep(0.1)
        port = int(port_file.read_text())
        self.url = f"gateway://127.0.0.1:{port}?ca={root / 'tls/cert.pem'}&token_file={token}"

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def rss(self) -> int:
        return _proc_hwm(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@contextmanager
def ceph_cluster(where: Path, env_file: Path | None = None) -> Iterator[dict[str, str]]:
    """The Ceph fixture started in `where`, or a running one's env file (left running)."""
    if env_file is not None:
        yield _env(env_file)
        return
    d = where / "ceph"
    env = {"CEPH_FIXTURE_OSD_SIZE": "24G", **os.environ}
    proc = subprocess.run([str(CEPH), "start", str(d)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BenchError(f"Ceph fixture failed: {proc.stderr[-2000:]}")
    try:
        yield _env(Path(proc.stdout.strip()))
    finally:
        subprocess.run([str(CEPH), "stop", str(d)], capture_output=True)


def _env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            values[k] = v.strip("'\"")
    return values


def _read_back_equal(url: str, image: Path, scratch: Path) -> str:
    """Restore the newest point through the gateway and check it as the core benchmark checks
    a valid-data restore (fsck, then every file equal): the point holds the file system's
    valid data only, so free-space blocks of the source (deleted files) legitimately differ."""
    out = scratch / "readback.img"
    subprocess.run(
        [OPENBDR, "restore", "--repo", url, "--host", HOST, "--to", str(out), "--force"],
        check=True,
        capture_output=True,
    )
    try:
        return verify_same_files(out, image, scratch)
    finally:
        out.unlink(missing_ok=True)


def _sync_rows(
    name: str, repo: str, images: list[Path], cache: Cache, log: Path, gw: Gateway | None
) -> Iterator[Row]:
    env: dict[str, str] = {}
    for phase, img in zip(("full", "incremental"), images, strict=False):
        cache.prepare([img])
        cpu0 = gw.cpu() if gw else 0.0
        cmd = [OPENBDR, "sync", "--repo", repo, "--host", HOST, "--compress", "zstd", "--json"]
        out = log / f"{name}-{phase}.log"
        io0 = device_bytes(img)
        u: Usage = run_measured([*cmd, str(img)], out, env=env)
        io = device_bytes(img) - io0
        cpu1 = gw.cpu() if gw else 0.0
        disks = json.loads(out.read_text())["disks"]
        row = Row(
            name,
            phase,
            round(u.wall, 2),
            round(u.cpu, 2),
            round(cpu1 - cpu0, 2),
            u.maxrss,
            gw.rss() if gw else 0,
            sum(int(d["stored_bytes"]) for d in disks),
            sum(int(d.get("written_bytes", 0)) for d in disks),
        )
        row.device_io = io
        if gw is not None:
            row.check = _read_back_equal(repo, img, log)
        yield row


def _drill_rows(name: str, gw: Gateway, runs: Path, rounds: int = 2) -> Iterator[Row]:
    """Boot-time rows: the fixture at each size synced in, then drilled `rounds` times."""
    plan = runs / "drill.toml"
    plan.write_text(DRILL_PLAN)
    for size in DRILL_SIZES:
        img = runs / f"boot-{size}.img"
        subprocess.run([str(MAKE_DISK), str(img), "--size", size], check=True, capture_output=True)
        host = f"boot-{size.lower()}"
        subprocess.run(
            [OPENBDR, "sync", "--repo", gw.url, "--host", host, "--compress", "zstd", str(img)],
            check=True,
            capture_output=True,
        )
        img.unlink()
        for k in range(rounds):
            cmd = [OPENBDR, "drill", "run", "-r", gw.url, "-H", host, "--plan", str(plan)]
            out = runs / f"{name}-drill-{size}-{k}.log"
            u = run_measured([*cmd, "--no-mark", "--json"], out, env={})
            rep = json.loads(out.read_text())
            if rep.get("verdict") != "passed":
                raise BenchError(f"drill of {host} on {name}: {rep.get('reason')}")
            row = Row(
                f"{name} drill",
                f"boot {size} #{k + 1}",
                round(u.wall, 2),
                round(u.cpu, 2),
                0.0,
                u.maxrss,
                0,
                0,
                0,
                f"ready after {rep['rto_first_s']:.1f} s",
            )
            row.boot = float(rep["rto_first_s"])
            yield row


def run(args: argparse.Namespace, rows: list[Row]) -> None:
    """Append every measured row to `rows` as it comes (a later failure keeps them)."""
    work: Path = args.workdir
    corpus = ensure_corpus(work)  # the same corpus directory as bench_core.py
    images = [corpus.disk, corpus.disk2]
    runs = args.runs or work / "block-runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    cache = Cache(args.cache)
    only = set(args.only.split(","))
    if "object" in only:
        repo = runs / "object-repo"
        subprocess.run([OPENBDR, "repo", "init", str(repo)], check=True, capture_output=True)
        rows += _sync_rows("object", str(repo), images, cache, runs, None)
        shutil.rmtree(repo)
    if "gw-file" in only:
        gw = Gateway(runs / "gw-file", f"file://{runs / 'gw-file' / 'volumes'}", {})
        try:
            rows += _sync_rows("gw-file", gw.url, images, cache, runs, gw)
            if "drill" in only:
                rows += _drill_rows("gw-file", gw, runs)
        finally:
            gw.stop()
        shutil.rmtree(runs / "gw-file")
    if "qemu-img" in only:
        cache.prepare([corpus.disk])
        out = runs / "disk.qcow2"
        cmd = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(corpus.disk), str(out)]
        u = run_measured(cmd, runs / "qemu-img.log")
        written = int(
            subprocess.run(
                ["du", "-sb", str(out)], capture_output=True, text=True, check=True
            ).stdout.split()[0]
        )
        rows.append(
            Row(
                "qemu-img convert",
                "full",
                round(u.wall, 2),
                round(u.cpu, 2),
                0.0,
                u.maxrss,
                0,
                0,
                written,
            )
        )
        out.unlink()
    if only & {"gw-rbd", "rbd-import"}:
        with ceph_cluster(runs, args.ceph_env) as env:
            os.environ.update(env)
            pool = env.get("RBD_POOL", "rbd")
            if "gw-rbd" in only:
                vols = f"rbd://{pool}?conf={env['CEPH_CONF']}"
                gw = Gateway(runs / "gw-rbd", vols, env)
                try:
                    rows += _sync_rows("gw-rbd", gw.url, images, cache, runs, gw)
                    if "drill" in only:
                        rows += _drill_rows("gw-rbd", gw, runs)
                finally:
                    gw.stop()
                    from openbdr.store.block.volumes import open_store

                    store = open_store(vols)
                    for name in store.names():  # the cluster may be a reused one
                        store.delete(name)
                    store.close()
            if "rbd-import" in only:
                cache.prepare([corpus.disk])
                cmd = ["rbd", "import", "--no-progress", str(corpus.disk), f"{pool}/bench-import"]
                u = run_measured(cmd, runs / "rbd-import.log", env=env)
                subprocess.run(
                    ["rbd", "rm", "--no-progress", f"{pool}/bench-import"],
                    capture_output=True,
                    env={**os.environ, **env},
                )
                rows.append(
                    Row(
                        "rbd import",
                        "full",
                        round(u.wall, 2),
                        round(u.cpu, 2),
                        0.0,
                        u.maxrss,
                        0,
                        0,
                        0,
                    )
                )


def table(rows: list[Row]) -> str:
    head = (
        "| contender | phase | wall s | CPU sender s | CPU gateway s | RSS sender MiB "
        "| RSS gateway MiB | on the wire MiB | written MiB | device I/O MiB | check |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r.contender} | {r.phase} | {r.wall} | {r.cpu_sender} | {r.cpu_gateway} "
        f"| {r.rss_sender / MIB:.0f} | {r.rss_gateway / MIB:.0f} | {r.wire_bytes / MIB:.0f} "
        f"| {r.written_bytes / MIB:.0f} | {r.device_io / MIB:.0f} | {r.check} |\n"
        for r in rows
    )
    obj = {r.phase: r.wall for r in rows if r.contender == "object"}
    notes = []
    for r in rows:
        if r.contender.startswith("gw-") and r.phase == "full" and obj.get("full"):
            notes.append(f"{r.contender} full / object full = {r.wall / obj['full']:.2f} (<= 1.2)")
    for name in sorted({r.contender for r in rows if r.boot}):
        best = {
            size: min(r.boot for r in rows if r.contender == name and size in r.phase)
            for size in DRILL_SIZES
        }
        notes.append(
            f"{name}: boot 8 GiB / 512 MiB = {best['8G'] / best['512M']:.2f} (<= 1.2; "
            f"best of each: {best['8G']:.1f} s / {best['512M']:.1f} s)"
        )
    return head + body + "\n" + "\n".join(notes) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench_block.py")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".work" / "bench")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", default=",".join(CONTENDERS))
    ap.add_argument("--cache", choices=("cold", "warm"), default="cold")
    ap.add_argument("--runs", type=Path, help="where repositories and volumes go")
    ap.add_argument("--ceph-env", type=Path, help="a running Ceph fixture's env file")
    args = ap.parse_args()
    args.workdir = args.workdir.resolve()
    rows: list[Row] = []
    try:
        run(args, rows)
    finally:  # what was measured before a failure is still reported
        print(table(rows))
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
