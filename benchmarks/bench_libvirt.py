"""Benchmark of the libvirt agentless source (issue 14) on the shared corpus.

    .venv/bin/python benchmarks/bench_libvirt.py [--workdir DIR] [--corpus DIR]
                                                 [--json out.json] [--cache cold|warm]
                                                 [--change-percent 5]

A private libvirtd (tests/agentless) runs the bootable fixture guest under TCG (KVM where
it works) with a second disk: the 8 GiB corpus disk (../shared/bench) as qcow2. Then, side
by side in one run, with the page cache prepared alike before every step:

(a) full: the first sync of the guest (both disks, valid data, over the pull-mode
    backup's NBD export) against `qemu-img convert -O raw` of the same two images;
(b) incremental: the guest overwrites `--change-percent` of the data disk's 1 MiB blocks
    (1 MiB of random data every 4 MiB of the corpus's large files, the file system mounted
    in the guest and unmounted after), the next sync reads the dirty bitmap's extents only;
(c) hash-compare: the guest changes as many blocks again, the checkpoint is deleted, and
    the next sync is a hash-compare pass of the same disks (all valid data read and
    hashed against the previous point).

Targets (issue 14): incremental / hash-compare <= 0.2, full / qemu-img convert <= 1.0.
Needs root (the libvirtd fixture, dropping the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corpus import ROOT, ensure_corpus
from measure import DROP_CACHES, BenchError

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.agentless.conftest import (
    Console,
    Libvirtd,
    domain_type,
    domain_xml,
    sync_point,
)

from openbdr.capture.registry import open_source

MIB = 1 << 20
HOST = "bench-kvm"
MAKE_DISK = ROOT.parent / "shared" / "fixtures" / "make-bootable-disk"


@dataclass
class Step:
    name: str
    seconds: float
    read_bytes: int = 0
    stored_bytes: int = 0
    valid_bytes: int = 0
    mode: str = ""
    dirty_bytes: int = 0
    #: CPU seconds (user + system) of this process (a sync: not QEMU's NBD server) or of
    #: its children (qemu-img convert): what the step costs on a shared machine
    cpu_s: float = 0.0


def cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, default=ROOT / ".work" / "bench-libvirt")
    p.add_argument("--corpus", type=Path, default=ROOT / ".work" / "bench")
    p.add_argument("--json", type=Path)
    p.add_argument("--cache", choices=("cold", "warm"), default="cold")
    p.add_argument("--change-percent", type=float, default=5.0)
    return p.parse_args(argv)


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def prepare(cache: str, files: list[Path]) -> None:
    os.sync()
    if cache == "cold":
        DROP_CACHES.write_text("3\n")
    else:
        subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)


def point_step(name: str, seconds: float, point: Any, snaps: list[Any]) -> Step:
    dirty = sum(getattr(d, "changed_bytes", 0) for d in snaps[-1].disks) if snaps else 0
    return Step(
        name,
        round(seconds, 3),
        read_bytes=sum(d.read_bytes for d in point.disks),
        stored_bytes=sum(d.stored_bytes for d in point.disks),
        valid_bytes=sum(d.valid_bytes for d in point.disks),
        mode="+".join(sorted({d.mode for d in point.disks})),
        dirty_bytes=dirty,
    )


class Recorder:
    """Keeps the snapshots a host hands out (for the dirty-bitmap byte counts)."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.name = host.name
        self.snaps: list[Any] = []

    def describe(self) -> str:
        return str(self.host.describe())

    def snapshot(self, since: Any) -> Any:
        snap = self.host.snapshot(since)
        self.snaps.append(snap)
        return snap


def change_blocks(console: Console, disk_mib: int, percent: float, salt: int) -> int:
    """Overwrite `percent` of the data disk's 1 MiB blocks from inside the guest: 1 MiB of
    random data every 4 MiB of the corpus's large files (the file system mounted in the
    guest, then unmounted clean, as a busy day would leave it)."""
    n = max(1, int(disk_mib * percent / 100))
    console.run(
        "mkdir -p /mnt/c; mount /dev/vdb1 /mnt/c; i=0; "
        "for f in $(find /mnt/c -type f -size +16384k); do "
        "sz=$(( $(stat -c %s $f) / 1048576 )); j=" + str(salt) + "; "
        f"while [ $j -lt $sz ] && [ $i -lt {n} ]; do "
        "dd if=/dev/urandom of=$f bs=1M count=1 seek=$j conv=notrunc 2>/dev/null; "
        f"i=$((i+1)); j=$((j+4)); done; [ $i -ge {n} ] && break; done; "
        "sync; umount /mnt/c; echo CHANGED=$i",
        timeout=3600,
    )
    return n


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    corpus = ensure_corpus(args.corpus)
    vda, vdb = work / "vda.qcow2", work / "vdb.qcow2"
    boot = work / "boot.img"
    if not boot.exists():
        run([str(MAKE_DISK), str(boot), "--size", "256M", "--marker", "bench"])
    print("qcow2 copies of the boot disk and the corpus disk …", flush=True)
    run(["qemu-img", "convert", "-O", "qcow2", str(boot), str(vda)])
    run(["qemu-img", "convert", "-O", "qcow2", str(corpus.disk), str(vdb)])
    disk_mib = corpus.disk.stat().st_size // MIB
    lv = Libvirtd(Path(tempfile.mkdtemp(prefix="obl-", dir="/tmp")))
    steps: list[Step] = []
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    from openbdr.store.target import init_target

    init_target(str(repo))
    try:
        lv.start()
        conn = lv.connect()
        serial = lv.dir / "serial.sock"
        dom = conn.defineXML(
            domain_xml(
                "bench", [("vda", vda, "qcow2"), ("vdb", vdb, "qcow2")], serial, domain_type()
            )
        )
        dom.create()
        console = Console(serial)
        console.wait_for("OPENBDR-GUEST-READY", timeout=600)
        time.sleep(1)
        spec = {
            "type": "libvirt",
            "platform": {"endpoint": lv.uri, "options": {"scratch_dir": str(lv.dir / "scr")}},
            "vm": "bench",
        }
        host = Recorder(open_source(HOST, spec))

        # (a) full sync against qemu-img convert of the same images
        prepare(args.cache, [vda, vdb])
        t, c = time.monotonic(), cpu(resource.RUSAGE_SELF)
        p = sync_point(str(repo), host)
        steps.append(point_step("openbdr full sync", time.monotonic() - t, p, host.snaps))
        steps[-1].cpu_s = round(cpu(resource.RUSAGE_SELF) - c, 2)
        out = work / "convert"
        out.mkdir(exist_ok=True)
        prepare(args.cache, [vda, vdb])
        t, c = time.monotonic(), cpu(resource.RUSAGE_CHILDREN)
        for img in (vda, vdb):
            # -U: the running domain holds the images' write lock (as a copy tool must cope)
            run(["qemu-img", "convert", "-U", "-O", "raw", str(img), str(out / f"{img.stem}.raw")])
        steps.append(Step("qemu-img convert (both images)", round(time.monotonic() - t, 3)))
        steps[-1].cpu_s = round(cpu(resource.RUSAGE_CHILDREN) - c, 2)
        shutil.rmtree(out)

        # (b) incremental after the guest changed a share of the data disk's blocks
        changed = change_blocks(console, disk_mib, args.change_percent, 1)
        prepare(args.cache, [vda, vdb])
        t = time.monotonic()
        p = sync_point(str(repo), host)
        steps.append(point_step("openbdr incremental sync", time.monotonic() - t, p, host.snaps))

        # (c) the same amount changed again; without the checkpoint: a hash-compare pass
        change_blocks(console, disk_mib, args.change_percent, 7)
        for cp in dom.listAllCheckpoints(0):
            cp.delete(0)
        prepare(args.cache, [vda, vdb])
        t = time.monotonic()
        p = sync_point(str(repo), host)
        steps.append(point_step("openbdr hash-compare sync", time.monotonic() - t, p, host.snaps))
        console.close()
        dom.destroy()
        dom.undefineFlags(0x10 | 0x2)
        conn.close()
    finally:
        lv.stop()
        shutil.rmtree(lv.dir, ignore_errors=True)

    by = {s.name: s for s in steps}
    for s in steps:
        print(
            f"{s.name}: {s.seconds:.2f} s, read {s.read_bytes >> 20} MiB, cpu {s.cpu_s:.1f} s",
            flush=True,
        )
    ratios = {
        "incremental / hash-compare (target <= 0.2)": round(
            by["openbdr incremental sync"].seconds / by["openbdr hash-compare sync"].seconds, 3
        ),
        "full / qemu-img convert (target <= 1.0)": round(
            by["openbdr full sync"].seconds / by["qemu-img convert (both images)"].seconds, 3
        ),
    }
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.release()}",
        "accel": domain_type(),
        "cache": args.cache,
        "changed_blocks": changed,
        "steps": [asdict(s) for s in steps],
        "ratios": ratios,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
