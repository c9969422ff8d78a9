"""Benchmark: time to a booted guest with instant access vs a full restore first.

    python -m openbdr.drill.bench --workdir DIR [--sizes 512M,8G] [--fill-gib 6]

For each size it builds the bootable fixture disk (`make-bootable-disk`), fills its root
file system with `--fill-gib` GiB of distinct incompressible files (bigger sizes only),
syncs it into a fresh directory repository, then measures

- instant access: `openbdr drill run` with a console-marker plan (no fsck), from the
  command's start to the marker (the report's rto_first_s), and
- full restore: `openbdr restore` of the point to an image file, then QEMU booting that
  file until the marker (same accelerator, memory and disk bus).

Prints one JSON object per size and a summary with the issue's ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .accel import choose_accel
from .vm import Vm, VmConfig

PLAN = """
[drill]
fsck = false
network = "none"
screenshot = false

[[probe]]
type = "console"
pattern = "OPENBDR-GUEST-READY"
timeout = 600
"""


def _openbdr(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("openbdr")
    return subprocess.run([str(exe), *args], check=True, capture_output=True, text=True)


def _fill(img: Path, gib: float, work: Path) -> None:
    """Distinct, incompressible 1 MiB blocks in 256 MiB files on the root file system."""
    mnt = work / "fill-mnt"
    mnt.mkdir(exist_ok=True)
    dev = subprocess.run(
        ["losetup", "-f", "--show", "-o", str(1 << 20), str(img)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            base = bytearray(os.urandom(1 << 20))
            blocks = int(gib * 1024)
            n = 0
            (mnt / "fill").mkdir(exist_ok=True)
            while n < blocks:
                with open(mnt / "fill" / f"data-{n // 256:04d}.bin", "wb") as f:
                    for _ in range(min(256, blocks - n)):
                        base[:8] = n.to_bytes(8, "little")
                        f.write(base)
                        n += 1
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def bench_size(size: str, fill_gib: float, work: Path, make_disk: Path) -> dict[str, object]:
    d = work / size
    d.mkdir(parents=True, exist_ok=True)
    img = d / "boot.img"
    subprocess.run([str(make_disk), str(img), "--size", size], check=True, capture_output=True)
    if fill_gib > 0:
        _fill(img, fill_gib, d)
    repo = d / "repo"
    _openbdr("repo", "init", str(repo))
    t = time.monotonic()
    _openbdr("sync", "--all-data", "--repo", str(repo), "--host", "bench", str(img))
    sync_s = time.monotonic() - t
    plan = d / "plan.toml"
    plan.write_text(PLAN)

    t = time.monotonic()
    proc = _openbdr(
        "drill",
        "run",
        "--repo",
        str(repo),
        "--host",
        "bench",
        "--plan",
        str(plan),
        "--no-mark",
        "--json",
    )
    instant_cmd_s = time.monotonic() - t
    rep = json.loads(proc.stdout)
    assert rep["verdict"] == "passed", rep["reason"]

    restored = d / "restored.img"
    t = time.monotonic()
    _openbdr("restore", "--repo", str(repo), "--host", "bench", "--to", str(restored))
    restore_s = time.monotonic() - t
    vmdir = Path(tempfile.mkdtemp(prefix="openbdr-bench-vm-"))
    try:
        vm = Vm(VmConfig([str(restored)], choose_accel()), vmdir)
        t_boot = time.monotonic()
        with vm:
            ok = vm.wait_console("OPENBDR-GUEST-READY", 600)
            boot_s = time.monotonic() - t_boot
        assert ok, "the restored disk did not boot"
    finally:
        shutil.rmtree(vmdir, ignore_errors=True)
    restored.unlink()
    return {
        "size": size,
        "filled_gib": fill_gib,
        "image_bytes": img.stat().st_size,
        "sync_s": round(sync_s, 1),
        "instant_to_marker_s": rep["rto_first_s"],
        "instant_command_s": round(instant_cmd_s, 1),
        "full_restore_s": round(restore_s, 1),
        "full_boot_s": round(boot_s, 1),
        "full_to_marker_s": round(restore_s + boot_s, 1),
        "accel": rep["accel"]["name"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m openbdr.drill.bench")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--sizes", default="512M,8G")
    ap.add_argument("--fill-gib", type=float, default=6.0, help="files added to sizes > 1G")
    ap.add_argument(
        "--make-disk",
        default=str(
            Path(__file__).resolve().parents[3]
            / ".."
            / "shared"
            / "fixtures"
            / "make-bootable-disk"
        ),
    )
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in args.sizes.split(","):
            big = size.upper().endswith("G") and float(size[:-1]) > 1
            row = bench_size(size, args.fill_gib if big else 0.0, work, Path(args.make_disk))
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        print(
            json.dumps(
                {
                    "instant_large_over_small": round(
                        float(str(large["instant_to_marker_s"]))
                        / float(str(small["instant_to_marker_s"])),
                        2,
                    ),
                    "instant_over_full_large": round(
                        float(str(large["instant_to_marker_s"]))
                        / float(str(large["full_to_marker_s"])),
                        2,
                    ),
                    "targets": "instant_large_over_small <= 1.5, instant_over_full_large <= 0.25",
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
