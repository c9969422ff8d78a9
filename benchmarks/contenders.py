"""The contenders: each one full backup of disk.img, one of disk2.img, then a restore of disk2.

Every contender gets a fresh directory, the same cache preparation before every step
and durable output (openbdr, restic and borg sync their repositories themselves; the
others are followed by `sync FILE` inside the measured command).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from corpus import (
    ROOT,
    Corpus,
    loop_device,
    verify_same_bytes,
    verify_same_files,
)
from measure import BenchError, Cache, Usage, device_bytes, du, run_measured, shell

OPENBDR = str(ROOT / ".venv" / "bin" / "openbdr")
HOST = "bench"
PHASES = ("full", "incremental", "restore")
PARTCLONE = "partclone.ext4 -c + zstd -1 -T2"


@dataclass
class Step:
    contender: str
    phase: str
    usage: Usage | None = None
    stored: int | None = None  # bytes this step added to the repository or output
    source_read: int | None = None  # bytes the tool itself reports reading from the source
    check: str = ""
    error: str = ""
    log: str = ""
    walls: list[float] = field(default_factory=list)  # every round's wall time
    #: bytes read + written by the whole block device under the runs (every process: the
    #: S3 gateway's OSD too), to see when a step is bound by this VM's single disk
    device_io: int | None = None


@dataclass
class Bench:
    corpus: Corpus
    runs: Path
    cache: Cache
    keep: bool = False
    verify: bool = True  # check restores (the first round only: it costs minutes)
    logs: Path = field(init=False)
    #: the S3 gateway's settings, once an S3 contender started it
    s3: dict[str, str] | None = None
    #: where restores write (default: beside each contender's repository)
    restore_root: Path | None = None

    def __post_init__(self) -> None:
        self.logs = self.runs / "logs"

    def fresh_dir(self, slug: str) -> Path:
        d = self.runs / slug
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def restore_dir(self, d: Path) -> Path:
        """A fresh directory for a contender's restored copy (on `restore_root` if given:
        e.g. tmpfs, so that a restore's writes do not share the disk the store reads from)."""
        if self.restore_root is None:
            return d
        out = self.restore_root / f"restore-{d.name}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        return out

    def drop_bucket(self, url: str) -> None:
        """An S3 contender's bucket, once measured (unless `--keep`)."""
        if not self.keep and self.s3 is not None:
            from s3bench import drop_bucket

            drop_bucket(urlparse(url).netloc, self.s3)

    def done_with(self, path: Path) -> None:
        """Free the space of a repository, output or restored copy once it is measured."""
        if self.keep:
            return
        if self.restore_root is not None:
            shutil.rmtree(self.restore_root / f"restore-{path.name}", ignore_errors=True)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def step(
        self,
        contender: str,
        phase: str,
        cmd: Sequence[str],
        inputs: Sequence[Path],
        *,
        stored_in: Path | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Step:
        before = du(stored_in) if stored_in is not None else 0
        self.cache.prepare(inputs)
        print(f"  {contender}: {phase} …", flush=True)
        log = self.logs / f"{slug(contender)}-{phase}.log"
        io0 = device_bytes(self.runs)
        usage = run_measured(cmd, log, cwd=cwd, env=env)
        io = device_bytes(self.runs) - io0
        stored = du(stored_in) - before if stored_in is not None else None
        print(f"    {usage.wall:.1f} s wall, {usage.cpu:.1f} s CPU", flush=True)
        return Step(
            contender, phase, usage, stored=stored, log=str(log), walls=[usage.wall], device_io=io
        )

    def check(self, step: Step, verify: Callable[[], str]) -> Step:
        """Run a restore's correctness check when this round verifies."""
        step.check = verify() if self.verify else "(checked in round 1)"
        return step


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def setup_cmd(cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
    """An unmeasured preparation command (repository init)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=full_env)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")


# -- openbdr ---------------------------------------------------------------------------
def _openbdr_report(step: Step) -> None:
    """Source bytes read, and how the valid-data filter saw the disk, from `sync --json`."""
    disks = json.loads(Path(step.log).read_text())["disks"]
    step.source_read = sum(int(d["read_bytes"]) for d in disks)
    notes = []
    for d in disks:
        layout = d.get("layout") or {}
        for part in layout.get("partitions", []):
            fs = part.get("filesystem") or {}
            if fs and not fs.get("exact", True):
                notes.append(
                    f"p{part['index']} {fs.get('kind')}: whole partition ({fs.get('note')})"
                )
    step.check = "; ".join(notes)


def openbdr(b: Bench, all_data: bool) -> Iterator[Step]:
    name = "openbdr --all-data" if all_data else "openbdr"
    d = b.fresh_dir(slug(name))
    repo = d / "repo"
    setup_cmd([OPENBDR, "repo", "init", str(repo)])
    extra = ["--all-data"] if all_data else []
    for phase, img in (("full", b.corpus.disk), ("incremental", b.corpus.disk2)):
        cmd = [OPENBDR, "sync", "-r", str(repo), "-H", HOST, "-c", "zstd", *extra]
        step = b.step(name, phase, [*cmd, "--json", str(img)], [img], stored_in=repo)
        _openbdr_report(step)
        yield step
    target = b.restore_dir(d) / "restore.img"
    cmd = [OPENBDR, "restore", "-r", str(repo), "-H", HOST, "--to", str(target)]
    step = b.step(name, "restore", cmd, [repo])
    if all_data:
        b.check(step, lambda: verify_same_bytes(target, b.corpus.disk2))
    else:
        b.check(step, lambda: verify_same_files(target, b.corpus.disk2, d / "mnt"))
    b.done_with(d)
    yield step


def openbdr_valid(b: Bench) -> Iterator[Step]:
    return openbdr(b, all_data=False)


def openbdr_all(b: Bench) -> Iterator[Step]:
    return openbdr(b, all_data=True)


# -- restic ----------------------------------------------------------------------------
def restic(b: Bench) -> Iterator[Step]:
    name = "restic"
    d = b.fresh_dir(name)
    repo = d / "repo"
    env = {
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": "bench",  # restic 0.14 refuses an empty password
        "RESTIC_CACHE_DIR": str(d / "cache"),
    }
    setup_cmd(["restic", "init", "--repository-version", "2"], env)
    for phase, img in (("full", b.corpus.disk), ("incremental", b.corpus.disk2)):
        cmd = ["restic", "backup", "-q", "--host", HOST, "--compression", "auto", img.name]
        yield b.step(name, phase, cmd, [img], stored_in=repo, cwd=b.corpus.dir, env=env)
    target = b.restore_dir(d) / "restore"
    restored = target / b.corpus.disk2.name  # backed up by relative name
    cmd = shell(f"restic restore -q latest --target '{target}' && sync '{restored}'")
    step = b.step(name, "restore", cmd, [repo], env=env)
    b.check(step, lambda: verify_same_bytes(restored, b.corpus.disk2))
    b.done_with(d)
    yield step


# -- borg ------------------------------------------------------------------------------
def borg(b: Bench) -> Iterator[Step]:
    name = "borg"
    d = b.fresh_dir(name)
    repo = d / "repo"
    env = {
        "BORG_BASE_DIR": str(d / "home"),
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
    }
    setup_cmd(["borg", "init", "-e", "none", str(repo)], env)
    archives = (("full", b.corpus.disk, "full"), ("incremental", b.corpus.disk2, "incr"))
    for phase, img, archive in archives:
        cmd = ["borg", "create", "-C", "zstd,1", f"{repo}::{archive}", img.name]
        yield b.step(name, phase, cmd, [img], stored_in=repo, cwd=b.corpus.dir, env=env)
    target = b.restore_dir(d) / "restore"
    target.mkdir()
    cmd = shell(f"borg extract --sparse '{repo}::incr' && sync {b.corpus.disk2.name}")
    step = b.step(name, "restore", cmd, [repo], cwd=target, env=env)
    b.check(step, lambda: verify_same_bytes(target / b.corpus.disk2.name, b.corpus.disk2))
    b.done_with(d)
    yield step


# -- zstd of the raw image -------------------------------------------------------------
def zstd_raw(b: Bench) -> Iterator[Step]:
    name = "zstd -1 -T2"
    d = b.fresh_dir(slug(name))
    for phase, img in (("full", b.corpus.disk), ("incremental", b.corpus.disk2)):
        out = d / f"{img.name}.zst"
        cmd = shell(f"zstd -1 -T2 -q -f '{img}' -o '{out}' && sync '{out}'")
        yield b.step(name, phase, cmd, [img], stored_in=out)
    packed = d / f"{b.corpus.disk2.name}.zst"
    target = b.restore_dir(d) / "restore.img"
    cmd = shell(f"zstd -d -q -f --sparse '{packed}' -o '{target}' && sync '{target}'")
    step = b.step(name, "restore", cmd, [packed])
    b.check(step, lambda: verify_same_bytes(target, b.corpus.disk2))
    b.done_with(d)
    yield step


# -- partclone of the partition, piped to zstd ----------------------------------------
def partclone(b: Bench) -> Iterator[Step]:
    name = PARTCLONE
    d = b.fresh_dir("partclone")
    for phase, img in (("full", b.corpus.disk), ("incremental", b.corpus.disk2)):
        out = d / f"{img.name}.pc.zst"
        plog = b.logs / f"partclone-{phase}.partclone.log"
        with loop_device(img) as dev:
            cmd = shell(
                f"partclone.ext4 -c -q -s {dev} -o - -L '{plog}' "
                f"| zstd -1 -T2 -q -f -o '{out}' && sync '{out}'"
            )
            yield b.step(name, phase, cmd, [img], stored_in=out)
    b.done_with(d)


# -- the same against S3 (the Ceph fixture's gateway) ---------------------------------
def _s3(b: Bench) -> dict[str, str]:
    if b.s3 is None:
        from s3bench import start_gateway

        b.s3 = start_gateway(b.runs / "ceph")
    return b.s3


GET_BOTO3 = "S3 GET x32 (openbdr chunks)"
GET_OPENBDR = "S3 GET x32, openbdr's GET (openbdr chunks)"


def openbdr_s3(b: Bench) -> Iterator[Step]:
    from s3bench import bucket_bytes

    name = "openbdr (S3)"
    env = _s3(b)
    d = b.fresh_dir(slug(name))
    url = f"s3://openbdr-{uuid.uuid4().hex[:8]}/repo"
    setup_cmd([OPENBDR, "repo", "init", url], env)
    stored = 0
    for phase, img in (("full", b.corpus.disk), ("incremental", b.corpus.disk2)):
        cmd = [OPENBDR, "sync", "-r", url, "-H", HOST, "-c", "zstd", "--json", str(img)]
        step = b.step(name, phase, cmd, [img], env=env)
        _openbdr_report(step)
        now = bucket_bytes(url, env)
        step.stored, stored = now - stored, now
        yield step
    target = b.restore_dir(d) / "restore.img"
    cmd = [OPENBDR, "restore", "-r", url, "-H", HOST, "--to", str(target)]
    step = b.step(name, "restore", cmd, [], env=env)
    b.check(step, lambda: verify_same_files(target, b.corpus.disk2, d / "mnt"))
    b.done_with(d)
    yield step
    # the floor: every chunk object the point needs (and the rest), 32 GETs in flight,
    # through boto3 (the floor) and through our store's own GET
    for mode, label in (("get", GET_BOTO3), ("get-openbdr", GET_OPENBDR)):
        get = [sys.executable, str(ROOT / "benchmarks" / "s3bench.py"), mode, url + "/chunks/", "32"]
        yield b.step(label, "restore", get, [], env=env)
    b.drop_bucket(url)


def restic_s3(b: Bench) -> Iterator[Step]:
    from s3bench import bucket_bytes

    name = "restic (S3)"
    env = _s3(b)
    d = b.fresh_dir(slug(name))
    bucket = f"restic-{uuid.uuid4().hex[:8]}"
    env = {
        **env,
        "RESTIC_REPOSITORY": f"s3:{env['S3_ENDPOINT_URL']}/{bucket}/repo",
        "RESTIC_PASSWORD": "bench",
        "RESTIC_CACHE_DIR": str(d / "cache"),
    }
    setup_cmd(["restic", "init", "--repository-version", "2"], env)
    stored = 0
    for phase, img in (("full", b.corpus.disk), ("incremental", b.corpus.disk2)):
        cmd = ["restic", "backup", "-q", "--host", HOST, "--compression", "auto", img.name]
        step = b.step(name, phase, cmd, [img], cwd=b.corpus.dir, env=env)
        now = bucket_bytes(f"s3://{bucket}/repo", env)
        step.stored, stored = now - stored, now
        yield step
    target = b.restore_dir(d) / "restore"
    restored = target / b.corpus.disk2.name
    cmd = shell(f"restic restore -q latest --target '{target}' && sync '{restored}'")
    step = b.step(name, "restore", cmd, [], env=env)
    b.check(step, lambda: verify_same_bytes(restored, b.corpus.disk2))
    b.done_with(d)
    b.drop_bucket(f"s3://{bucket}/repo")
    yield step


Contender = Callable[[Bench], Iterator[Step]]

CONTENDERS: dict[str, tuple[str, Contender]] = {
    "openbdr": ("openbdr", openbdr_valid),
    "openbdr-all-data": ("openbdr --all-data", openbdr_all),
    "restic": ("restic", restic),
    "borg": ("borg", borg),
    "zstd": ("zstd -1 -T2", zstd_raw),
    "partclone": (PARTCLONE, partclone),
    "openbdr-s3": ("openbdr (S3)", openbdr_s3),
    "restic-s3": ("restic (S3)", restic_s3),
}
