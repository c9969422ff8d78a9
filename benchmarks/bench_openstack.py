"""Benchmark of the agentless OpenStack source (issue 15): the corpus on a Cinder RBD volume.

    .venv/bin/python benchmarks/bench_openstack.py [--workdir DIR] [--corpus DIR]
                                                   [--json out.json] [--no-benji] [--doc]
                                                   [--contenders openbdr,openbdr-hash]

The shared corpus disk (../shared/bench, reused from .work/bench) is written into an 8 GiB
Cinder volume of the faithful fake (tests/fakes/openstack) whose backend is a real Ceph
cluster started here (`ceph-cluster`, 24 GiB sparse OSD), only its non-zero 4 MiB pieces,
as `rbd import` would. Then, side by side in one run, each contender makes a full backup
of the volume; the corpus's day of changes (`mutate.sh`: disk2.img) is written into the
volume as the guest wrote it (every differing 4 KiB page), and each contender makes an
incremental:

- `openbdr` — the `openstack` source through the CLI: Cinder snapshots, RBD diff since the
  previous snapshot (fast-diff, whole objects), the changed objects read;
- `openbdr-exact` — the same with option `rbd_exact=true`: of the 4 MiB objects fast-diff
  names, only the bytes written in them (blocks at least 1/8 changed whole; the rest of
  the others from the previous point);
- `openbdr-hash` — the same with option `rbd_diff=false`: every valid block is read and
  hashed, only differing blocks stored (the hash-compare pass);
- `benji` — Benji 0.17 (PyPI) on the RBD snapshots, with `rbd diff --whole-object` hints
  for both passes (its documented way), file storage, no compression, like openbdr here.

Per step: wall time, CPU, peak RSS of the process tree, bytes read from the source
(each tool's own count), stored bytes (du of the repository growth). The page cache is
dropped before each step. The last openbdr point is checked block by block against
disk2.img. Needs root (corpus build, dropping caches).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corpus import ROOT, ensure_corpus
from measure import DROP_CACHES, BenchError, du, run_measured

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.fakes.openstack import Cloud, FakeServer, write_clouds_yaml

DEFAULT_WORKDIR = ROOT / ".work" / "bench-openstack"
CORPUS = ROOT / ".work" / "bench"
CEPH = ROOT.parent / "shared" / "fixtures" / "ceph-cluster"
OPENBDR = ROOT / ".venv" / "bin" / "openbdr"
MIB = 1 << 20
PAGE = 4096
PIECE = 4 * MIB
#: the openbdr contenders and their source options
OPENBDR_CONTENDERS = {"openbdr": {}, "openbdr-exact": {"rbd_exact": "true"},
                      "openbdr-hash": {"rbd_diff": "false"}}


@dataclass
class Step:
    contender: str
    phase: str  # full | incremental
    wall: float
    cpu: float
    maxrss: int
    read_bytes: int | None
    stored_bytes: int
    note: str = ""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="scratch directory")
    p.add_argument("--corpus", type=Path, default=CORPUS, help="corpus directory (reused)")
    p.add_argument("--json", type=Path, help="write all results as JSON here")
    p.add_argument("--no-benji", action="store_true", help="leave Benji out")
    p.add_argument("--benji", type=Path, default=None,
                   help="the benji executable (default: WORKDIR/benji-venv, installed there)")
    p.add_argument("--doc", action="store_true", help="append the results to docs/benchmarks.md")
    p.add_argument("--keep", action="store_true", help="leave the Ceph cluster running")
    p.add_argument("--contenders", default=",".join(OPENBDR_CONTENDERS),
                   help="openbdr contenders to run, comma-separated (each repository holds a "
                   "full copy: ~5.7 GiB; default all)")
    return p.parse_args(argv)


def run(cmd: list[str], **kw: Any) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


# -- the cloud ------------------------------------------------------------------------------
def start_ceph(where: Path) -> dict[str, str]:
    env = dict(os.environ, CEPH_FIXTURE_OSD_SIZE="24G")
    out = run([str(CEPH), "start", str(where)], env=env).strip()
    vals = {}
    for line in Path(out).read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            vals[k] = v.strip("'\"")
    os.environ.update(vals)
    return vals


def keyring(path: Path) -> Path:
    path.write_text(run(["ceph", "auth", "get-or-create", "client.openbdr", "mon",
                         "profile rbd", "osd", "profile rbd-read-only pool=rbd"]))
    return path


def fill_volume(cloud: Cloud, volume_id: str, image: Path) -> int:
    """Write the image's non-zero 4 MiB pieces into the volume; return the bytes written."""
    import rbd

    written = 0
    zero = bytes(PIECE)
    with open(image, "rb") as f, rbd.Image(cloud.ioctx, cloud.image_name(volume_id)) as img:
        size = os.fstat(f.fileno()).st_size
        off = 0
        while off < size:
            try:
                off = os.lseek(f.fileno(), off, os.SEEK_DATA) // PIECE * PIECE
            except OSError:
                break
            f.seek(off)
            data = f.read(PIECE)
            if data != zero[: len(data)]:
                img.write(data, off)
                written += len(data)
            off += PIECE
    return written


def write_day_of_changes(cloud: Cloud, volume_id: str, before: Path, after: Path) -> int:
    """Write every 4 KiB page where disk2.img differs from disk.img, as the guest did
    (runs of changed pages as one write; up to 64 writes in flight)."""
    import rbd

    written = 0
    pending: deque[Any] = deque()

    def settle(limit: int) -> None:
        while len(pending) > limit:
            done = pending.popleft()[0]
            done.wait_for_complete_and_cb()
            if done.get_return_value() < 0:
                raise BenchError(f"RBD write failed: {done.get_return_value()}")

    with open(before, "rb") as a, open(after, "rb") as b, \
            rbd.Image(cloud.ioctx, cloud.image_name(volume_id)) as img:
        size = os.fstat(b.fileno()).st_size
        for off in range(0, size, MIB):
            x, y = a.read(MIB), b.read(MIB)
            if x == y:
                continue
            run_start = None
            for p in range(0, len(y), PAGE):
                same = x[p:p + PAGE] == y[p:p + PAGE]
                if not same and run_start is None:
                    run_start = p
                if (same or p + PAGE >= len(y)) and run_start is not None:
                    end = p if same else p + PAGE
                    data = y[run_start:end]
                    pending.append((img.aio_write(data, off + run_start, lambda c: None), data))
                    settle(64)
                    written += end - run_start
                    run_start = None
        settle(0)
    return written


# -- contenders -----------------------------------------------------------------------------
def openbdr_step(name: str, phase: str, repo: Path, spec: dict[str, Any], logs: Path) -> Step:
    before = du(repo)
    drop_caches()
    log = logs / f"{name}-{phase}.json"
    usage = run_measured([str(OPENBDR), "-v", "sync", "-r", str(repo), "-H", name,
                          "--source", json.dumps(spec), "--json"], log)
    point = json.loads(log.read_text())
    disks = point.get("disks", [])
    read = sum(int(d.get("read_bytes", 0)) for d in disks)
    modes = ",".join(str(d.get("mode")) for d in disks)
    return Step(name, phase, usage.wall, usage.cpu, usage.maxrss, read, du(repo) - before,
                f"mode {modes}; {_where_time_went(log.with_suffix(log.suffix + '.err'))}")


def cold_start() -> list[float]:
    """Wall seconds of `openbdr --help` right after the page cache is dropped, three times:
    the interpreter and the imports every command pays."""
    out = []
    for _ in range(3):
        drop_caches()
        t = time.monotonic()
        run([str(OPENBDR), "--help"])
        out.append(round(time.monotonic() - t, 2))
    return out


def _where_time_went(err: Path) -> str:
    """The sync's own phase times and its RBD requests, from its -v log."""
    out = []
    for line in err.read_text(errors="replace").splitlines():
        if "RBD requests" in line or "partly changed blocks" in line:
            out.append(line.split(": ", 1)[-1].split(": ", 1)[-1])
        elif "sync of " in line and ": {" in line:
            out.append("phases s " + line.split(": {", 1)[1].rstrip("}").replace("'", ""))
    return "; ".join(out)


class Benji:
    def __init__(self, exe: Path, work: Path, ceph_conf: str) -> None:
        self.exe, self.work = exe, work
        self.conf = work / "benji.yaml"
        (work / "data").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "configurationVersion: '1'\n"
            f"databaseEngine: sqlite:///{work}/benji.sqlite\n"
            "defaultStorage: storage-1\n"
            "storages:\n"
            "  - name: storage-1\n"
            "    storageId: 1\n"
            "    module: file\n"
            "    configuration:\n"
            f"      path: {work}/data\n"
            "ios:\n"
            "  - name: rbd\n"
            "    module: rbd\n"
            "    configuration:\n"
            f"      cephConfigFile: {ceph_conf}\n"
            "      clientIdentifier: admin\n"
            "      simultaneousReads: 8\n"
            "      simultaneousWrites: 8\n"
            "      newImageFeatures: [RBD_FEATURE_LAYERING, RBD_FEATURE_EXCLUSIVE_LOCK]\n"
        )
        run([str(exe), "-c", str(self.conf), "database-init"])
        self.versions: list[str] = []

    def backup(self, phase: str, pool: str, image: str, snap: str, base_snap: str | None,
               logs: Path) -> Step:
        spec = f"{pool}/{image}@{snap}"
        run(["rbd", "snap", "create", spec])
        hints = self.work / f"hints-{snap}.json"
        diff = ["rbd", "diff", "--whole-object", spec, "--format=json"]
        if base_snap:
            diff[3:3] = ["--from-snap", base_snap]
        hints.write_text(run(diff))
        cmd = [str(self.exe), "-c", str(self.conf), "-m", "backup", "-s", snap, "-r",
               str(hints)]
        if self.versions:
            cmd += ["-f", self.versions[-1]]
        cmd += [f"rbd:{spec}", "corpus"]
        before = du(self.work / "data")
        drop_caches()
        log = logs / f"benji-{phase}.json"
        usage = run_measured(cmd, log)
        out = json.loads(log.read_text() or "{}")
        uid = _benji_uid(out)
        self.versions.append(uid)
        listing = json.loads(run([str(self.exe), "-c", str(self.conf), "-m", "ls"]))
        read = _benji_stat(listing, uid, "bytes_read")
        return Step("benji", phase, usage.wall, usage.cpu, usage.maxrss, read,
                    du(self.work / "data") - before, f"version {uid}")


def _benji_uid(out: Any) -> str:
    versions = out.get("versions") if isinstance(out, dict) else None
    if versions:
        return str(versions[0].get("uid"))
    raise BenchError(f"benji printed no version: {out!r}")


def _benji_stat(listing: Any, uid: str, key: str) -> int | None:
    """A statistic Benji 0.17 keeps on the version (`ls` shows it)."""
    for v in (listing.get("versions") or []) if isinstance(listing, dict) else []:
        if str(v.get("uid")) == uid and v.get(key) is not None:
            return int(v[key])
    return None


def benji_exe(a: argparse.Namespace) -> Path | None:
    """Benji 0.17 in its own venv: it pins SQLAlchemy < 2, and its pinned ruamel.yaml
    does not build on Python 3.11, so the pins are relaxed where they do not matter."""
    if a.no_benji:
        return None
    if a.benji:
        return a.benji
    venv = a.workdir / "benji-venv"
    exe = venv / "bin" / "benji"
    if exe.exists():
        return exe
    run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)])
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    run([*pip, "--no-deps", "benji==0.17.0"])
    run([*pip, "PrettyTable<1", "sqlalchemy>=1.4.14,<2", "setproctitle<2",
         "python-dateutil<3", "alembic<2", "ruamel.yaml>0.15,<0.18", "psycopg2-binary<3",
         "argcomplete<2", "sparsebitfield<1", "cerberus<2", "pycryptodome<4", "pyparsing<3",
         "semantic-version<3", "dateparser<2", "structlog", "colorama<1", "diskcache",
         "attrs<22"])
    return exe


# -- checks and report ----------------------------------------------------------------------
def verify_point(repo: Path, host: str, image: Path) -> str:
    """The host's latest point against the image the volume now equals: inside the image's
    valid data (partition table, used file-system blocks) byte for byte; outside it each
    4 KiB page is either the image's (written by the guest since the full pass) or zero
    (never read: free space)."""
    from openbdr.blocks import BLOCK_SIZE
    from openbdr.extents import intersect
    from openbdr.store.target import open_target
    from openbdr.volume import analyze
    from openbdr.volume.reader import FileReader

    with open(image, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        valid = analyze(FileReader.from_fd(f.fileno(), size, str(image))).valid_extents
    target = open_target(str(repo))
    point = target.latest(host)
    assert point is not None
    rec = point.disks[0]
    reader = target.reader(point, rec)
    bad: list[int] = []
    zero = bytes(PAGE)
    with open(image, "rb") as f:
        for i in range((rec.size + BLOCK_SIZE - 1) // BLOCK_SIZE):
            base = i * BLOCK_SIZE
            f.seek(base)
            want, have = f.read(BLOCK_SIZE), reader.read_block(i)
            if want == have:
                continue
            inside = intersect(valid, [(base, len(want))])
            ok = all(have[e.offset - base:e.end - base] == want[e.offset - base:e.end - base]
                     for e in inside)
            for p in range(0, len(want), PAGE) if ok else ():
                page = have[p:p + PAGE]
                if page != want[p:p + PAGE] and page != zero[:len(page)] and not any(
                        e.offset < base + p + PAGE and e.end > base + p for e in inside):
                    ok = False
                    break
            if not ok:
                bad.append(i)
    reader.close()
    target.close()
    if bad:
        raise BenchError(f"{host}: blocks {bad[:10]} ({len(bad)}) of point {point.id} are "
                         f"not {image.name}'s valid data")
    return (f"{host}: point {point.id} holds {image.name}'s valid data byte for byte, "
            "and outside it only the guest's writes or zeros")


def ratio(steps: list[Step], a: str, b: str, phase: str, pb: str | None = None) -> float | None:
    x = next((s for s in steps if s.contender == a and s.phase == phase), None)
    y = next((s for s in steps if s.contender == b and s.phase == (pb or phase)), None)
    return round(x.wall / y.wall, 3) if x and y and y.wall > 0 else None


def report(steps: list[Step], facts: dict[str, Any]) -> str:
    def mib(n: int | None) -> str:
        return "–" if n is None else f"{n / MIB:,.0f}"

    rows = ["| contender | phase | wall s | CPU s | peak RSS MiB | read MiB | stored MiB | note |",
            "|---|---|---|---|---|---|---|---|"]
    for s in steps:
        rows.append(f"| {s.contender} | {s.phase} | {s.wall:.1f} | {s.cpu:.1f} | "
                    f"{mib(s.maxrss)} | {mib(s.read_bytes)} | {mib(s.stored_bytes)} | {s.note} |")
    targets = [
        ("incremental ≤ 0.2 × hash-compare", ratio(steps, "openbdr", "openbdr-hash",
                                                  "incremental"), 0.2),
        ("incremental ≤ 0.7 × Benji hinted incremental", ratio(steps, "openbdr", "benji",
                                                              "incremental"), 0.7),
        ("full ≤ 0.7 × Benji full", ratio(steps, "openbdr", "benji", "full"), 0.7),
    ]
    rows += ["", "| target | ratio | met |", "|---|---|---|"]
    for name, r, limit in targets:
        rows.append(f"| {name} | {'–' if r is None else r} | "
                    f"{'–' if r is None else ('yes' if r <= limit else 'no')} |")
    rows += ["", *(f"- {k}: {v}" for k, v in facts.items())]
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench_openstack: needs root (corpus build, dropping caches)")
    corpus = ensure_corpus(a.corpus)
    work = a.workdir
    if work.exists():
        subprocess.run([str(CEPH), "stop", str(work / "ceph")], capture_output=True)
        shutil.rmtree(work / "run", ignore_errors=True)
        shutil.rmtree(work / "ceph", ignore_errors=True)
    (work / "run").mkdir(parents=True, exist_ok=True)
    logs = work / "run" / "logs"
    benji = benji_exe(a)
    env = start_ceph(work / "ceph")
    facts: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                             "cpus": os.cpu_count()}
    steps: list[Step] = []
    cloud = Cloud(pool="rbd")
    server = FakeServer(cloud).start()
    try:
        project = cloud.add_project("bench")
        user = cloud.add_user("bench", "bench-pass", project, ["member"])
        clouds = write_clouds_yaml(str(work / "run" / "clouds.yaml"), "bench", server,
                                   "bench", "bench-pass", "bench")
        kr = keyring(work / "run" / "openbdr.keyring")
        vol = cloud.add_volume("corpus", 8, project, bootable=True)
        t = time.monotonic()
        facts["imported MiB"] = fill_volume(cloud, vol.id, corpus.disk) // MIB
        facts["import s"] = round(time.monotonic() - t, 1)
        vm = cloud.add_server("corpus-vm", project, user.id, [vol])
        options = {"clouds_yaml": clouds, "ceph_conf": env["CEPH_CONF"],
                   "ceph_keyring": str(kr), "ceph_pool": "rbd"}

        def spec(**extra: Any) -> dict[str, Any]:
            return {"type": "openstack", "vm": vm.id, "platform": {
                "endpoint": "bench", "credentials": {}, "options": {**options, **extra}}}

        chosen = [n for n in OPENBDR_CONTENDERS if n in a.contenders.split(",")]
        repos = {n: work / "run" / n for n in chosen}
        for r in repos.values():
            run([str(OPENBDR), "repo", "init", str(r)])
        bj = Benji(benji, work / "run" / "benji", env["CEPH_CONF"]) if benji else None
        image = cloud.image_name(vol.id)

        facts["start-up s (openbdr --help, cold: page cache dropped)"] = cold_start()
        for n in chosen:
            steps.append(openbdr_step(n, "full", repos[n], spec(**OPENBDR_CONTENDERS[n]), logs))
        if bj:
            steps.append(bj.backup("full", "rbd", image, "benji-1", None, logs))

        t = time.monotonic()
        facts["day of changes MiB (4 KiB pages)"] = write_day_of_changes(
            cloud, vol.id, corpus.disk, corpus.disk2) // MIB
        facts["day of changes s"] = round(time.monotonic() - t, 1)

        for n in chosen:
            steps.append(openbdr_step(n, "incremental", repos[n],
                                      spec(**OPENBDR_CONTENDERS[n]), logs))
        if bj:
            steps.append(bj.backup("incremental", "rbd", image, "benji-2", "benji-1", logs))
        try:
            facts["check"] = verify_point(repos[chosen[0]], chosen[0], corpus.disk2)
        except BenchError as exc:
            facts["check"] = f"FAILED: {exc}"
    finally:
        server.stop()
        cloud.close()
        if not a.keep:
            subprocess.run([str(CEPH), "stop", str(work / "ceph")], capture_output=True)
    text = report(steps, facts)
    print(text)
    if a.json:
        a.json.write_text(json.dumps({"steps": [asdict(s) for s in steps], "facts": facts},
                                     indent=2))
    if a.doc:
        doc = ROOT / "docs" / "benchmarks.md"
        with open(doc, "a") as f:
            f.write(f"\n## OpenStack with Ceph RBD, agentless (issue 15)\n\n"
                    f"`benchmarks/bench_openstack.py`, {facts['date']}.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

