"""Side-by-side benchmark of OpenBDR's core engine (issues 2 and 3).

    .venv/bin/python benchmarks/bench_core.py [--workdir DIR] [--json out.json]

Builds (or reuses) the shared corpus (../shared/bench: disk.img, then disk2.img after a
day of changes), then for every contender measures a full backup of disk.img, a second
backup of disk2.img and a restore of it: wall time, CPU time and peak RSS of the process
tree, bytes read from the disk and bytes stored. Restores are checked (byte-equal, or a
clean fsck and equal files for a valid-data restore). Prints a table and the ratios
against the targets, and rewrites the results part of docs/benchmarks.md.
Needs root (loop devices, mounts, dropping the page cache). `--only …,openbdr-s3,restic-s3`
adds the same against S3 on the Ceph fixture's gateway (started by the run, 24 GiB OSD).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contenders import CONTENDERS, Bench, Step
from corpus import ROOT, SHARED_BENCH, Corpus, ensure_corpus, ext4_usage
from measure import BenchError, Cache, Usage, du
from report import MIB, Target, results_markdown, targets, write_doc

DEFAULT_WORKDIR = ROOT / ".work" / "bench"
VERSION_CMDS = {
    "openbdr": [str(ROOT / ".venv" / "bin" / "openbdr"), "version"],
    "restic": ["restic", "version"],
    "borg": ["borg", "--version"],
    "zstd": ["zstd", "--version"],
    "partclone": ["partclone.ext4", "-v"],
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="corpus and runs")
    p.add_argument("--json", type=Path, help="write all results as JSON here")
    p.add_argument(
        "--cache",
        choices=("cold", "warm"),
        default="cold",
        help="drop the page cache before every step (cold) or pre-read inputs (warm)",
    )
    p.add_argument(
        "--only",
        default=",".join(k for k in CONTENDERS if not k.endswith("-s3")),
        help=f"comma-separated contenders: {', '.join(CONTENDERS)}",
    )
    p.add_argument(
        "--merge",
        type=Path,
        help="JSON of an earlier run: keep its steps of the contenders not run now",
    )
    p.add_argument(
        "--doc",
        type=Path,
        default=ROOT / "docs" / "benchmarks.md",
        help="document whose results part is rewritten ('-' for none)",
    )
    p.add_argument(
        "--restore-dir",
        type=Path,
        help="write every contender's restore here (e.g. /dev/shm: then a restore's writes "
        "do not share the one disk that the repository or the S3 gateway reads from)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds; each step reports its best round (restores checked in round 1)",
    )
    p.add_argument("--keep", action="store_true", help="keep repositories and restored copies")
    return p.parse_args(argv)


def _first_line(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    versions = "; ".join(f"{name}: {_first_line(cmd)}" for name, cmd in VERSION_CMDS.items())
    commit = _first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    versions += f" (tree {commit})"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": mem_kib / (1 << 20),
        "kernel": platform.release(),
        "versions": versions,
    }


def corpus_facts(corpus: Corpus) -> dict[str, Any]:
    """Sizes of the corpus (computed once and kept next to it: it reads 16 GiB)."""
    cached = corpus.dir / "corpus-facts.json"
    if cached.exists() and cached.stat().st_mtime >= corpus.disk2.stat().st_mtime:
        return dict(json.loads(cached.read_text()))
    used, allocated = ext4_usage(corpus.disk, corpus.dir / "facts-mnt")
    diff = subprocess.run(
        [sys.executable, str(SHARED_BENCH / "blockdiff.py"), str(corpus.disk), str(corpus.disk2)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = dict(kv.split("=", 1) for kv in diff.split() if "=" in kv)
    facts = {
        "corpus": str(corpus.dir),
        "image_gib": corpus.disk.stat().st_size / (1 << 30),
        "data_mib": du(corpus.disk) / MIB,
        "used_mib": used / MIB,
        "allocated_mib": allocated / MIB,
        "allocated": allocated,
        "changed_blocks": int(fields["differ"]),
        "blocks": int(fields["blocks"]),
    }
    cached.write_text(json.dumps(facts, indent=1))
    return facts


def run_round(bench: Bench, names: list[str]) -> list[Step]:
    steps: list[Step] = []
    for key in names:
        label, fn = CONTENDERS[key]
        print(f"{label}:", flush=True)
        try:
            steps.extend(fn(bench))
        except (BenchError, subprocess.CalledProcessError) as exc:
            print(f"  FAILED: {exc}", flush=True)
            steps.append(Step(label, "-", error=str(exc).splitlines()[0]))
    return steps


def best_of(rounds: list[list[Step]]) -> list[Step]:
    """Per contender and step, the round with the least wall time (noise only adds time),
    with every round's wall time and the first round's check; failures are all kept."""
    best: dict[tuple[str, str], Step] = {}
    first: dict[tuple[str, str], Step] = {}
    failed: list[Step] = []
    for steps in rounds:
        for s in steps:
            if s.usage is None:
                failed.append(s)
                continue
            key = (s.contender, s.phase)
            first.setdefault(key, s)
            kept = best.get(key)
            if kept is None or kept.usage is None or s.usage.wall < kept.usage.wall:
                best[key] = s
    for key, s in best.items():
        s.walls = [
            x.usage.wall for r in rounds for x in r if x.usage and (x.contender, x.phase) == key
        ]
        s.check = first[key].check
    return [*best.values(), *failed]


def run_contenders(bench: Bench, names: list[str], repeat: int) -> list[Step]:
    """`repeat` rounds over all contenders, every other round in reverse order."""
    rounds = []
    for r in range(repeat):
        bench.verify = r == 0
        order = names if r % 2 == 0 else names[::-1]
        print(f"-- round {r + 1} of {repeat}", flush=True)
        rounds.append(run_round(bench, order))
    return best_of(rounds)


def load_steps(path: Path, skip: set[str]) -> list[Step]:
    """Steps of an earlier run's JSON, except those of the contenders in `skip`."""
    out = []
    for raw in json.loads(path.read_text())["steps"]:
        if raw["contender"] in skip:
            continue
        usage = Usage(**raw["usage"]) if raw["usage"] else None
        out.append(Step(**{**raw, "usage": usage}))
    return out


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        print(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
        return 2
    started = datetime.now(UTC)
    t0 = time.monotonic()
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "cache": args.cache,
        **machine(),
    }
    corpus = ensure_corpus(args.workdir)
    meta.update(corpus_facts(corpus))
    meta["load_before"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    bench = Bench(corpus, args.workdir / "runs", Cache(args.cache), keep=args.keep)
    bench.restore_root = args.restore_dir
    meta["restore_dir"] = str(args.restore_dir or "beside each repository")
    steps = run_contenders(bench, names, args.repeat)
    meta["rounds"] = args.repeat
    if args.merge:
        ran = {CONTENDERS[n][0] for n in names}
        steps = load_steps(args.merge, ran) + steps
        meta["merged"] = sorted({s.contender for s in steps} - ran)
        meta["merged_from"] = str(args.merge)
    meta["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    meta["duration_min"] = (time.monotonic() - t0) / 60
    variants = [label for key, (label, _) in CONTENDERS.items() if key.startswith("openbdr")]
    # the S3 contenders need the gateway: only when asked for (--only …,openbdr-s3,restic-s3)
    all_targets: dict[str, list[Target]] = {
        v: targets(steps, v, int(meta["allocated"]))
        for v in variants
        if any(s.contender == v and s.usage for s in steps)
    }
    results = results_markdown(meta, steps, all_targets)
    print("\n" + results)
    if args.json:
        payload = {
            "meta": meta,
            "steps": [dataclasses.asdict(s) for s in steps],
            "targets": {
                v: [dataclasses.asdict(t) | {"met": t.met} for t in ts]
                for v, ts in all_targets.items()
            },
        }
        args.json.write_text(json.dumps(payload, indent=1))
    if str(args.doc) != "-":
        write_doc(args.doc, results)
    return 1 if any(s.error for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
