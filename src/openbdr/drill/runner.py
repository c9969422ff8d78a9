"""Run one drill: export, check, boot or start, probe, screenshot, tear down, report.

Teardown is unconditional (ExitStack + orphan registry); the report is written after
it, so what could not be undone is in the report too. A passed drill marks the point
verified in its manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import OpenBDRError
from ..store.manifest import RestorePoint, new_point_id
from ..store.target import Target
from .accel import choose_accel
from .checks import Check, boot_signature, fsck_volume, mount_volume
from .export import serve_point
from .image import PointImage
from .plan import Plan
from .probes import ProbeContext, ProbeResult, run_probe
from .report import Report, store_report
from .resources import Resources
from .vm import DirectDrive, Vm, VmConfig, direct_drives, free_port
from .volumes import find_volume, volumes

log = logging.getLogger(__name__)

Say = Callable[[str], None]
LIVE_PROBES = {"console", "shell", "tcp", "http", "sql", "guest-exec", "command"}


@dataclass
class DrillOptions:
    mark_verified: bool = True
    accel: str | None = None  # overrides the plan
    say: Say | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.replace("\x1b[6n", "").splitlines()[-lines:])


class Drill:
    def __init__(self, repo: Target, point: RestorePoint, plan: Plan, opts: DrillOptions):
        self.repo = repo
        self.point = point
        self.plan = plan
        self.opts = opts
        self.id = new_point_id()
        self.t0 = time.monotonic()
        self.report = Report(
            id=self.id,
            host=point.host,
            point=point.id,
            repository=repo.url,
            plan=plan.source,
            kind=plan.kind,
            started=_now(),
        )
        self.screenshot: bytes | None = None
        self.checks: list[Check] = []
        self.results: list[ProbeResult] = []
        self.error = ""

    def say(self, msg: str) -> None:
        log.info("drill %s: %s", self.id, msg)
        if self.opts.say:
            self.opts.say(f"[{time.monotonic() - self.t0:6.1f} s] {msg}")

    def mark(self, name: str) -> None:
        self.report.timings[name] = round(time.monotonic() - self.t0, 3)

    # -- phases --------------------------------------------------------------
    def pre_boot(self, res: Resources, work: Path) -> dict[str, Path]:
        """Boot signature, fsck of every volume, mounts for file probes."""
        # service drills read files on their own read-write mount, after recovery
        kinds = {"file"} if self.plan.kind == "vm" else set()
        file_probes = [p for p in self.plan.probes if p.type in kinds]
        mounts: dict[str, Path] = {}
        if self.plan.kind == "vm":
            first = PointImage(self.repo.reader(self.point, self.point.disks[0]), cache_blocks=2)
            self.checks.append(boot_signature(first, self.point.disks[0].name))
        if not (self.plan.fsck or file_probes):
            return mounts
        fuse = res.fuse_point(
            self.repo.url, self.point.host, self.point.id, work / "disks", overlay=True, tmpdir=work
        )
        self.mark("disks_as_files")
        all_vols = []
        for d in self.point.disks:
            vols = volumes(PointImage(self.repo.reader(self.point, d), cache_blocks=8))
            all_vols += [(d, v) for v in vols]
            for v in vols:
                if not v.fstype:
                    self.checks.append(
                        Check(
                            f"volume {v.number} of {d.name}",
                            "layout",
                            False,
                            "no file system recognised (a damaged superblock, or a kind OpenBDR "
                            "cannot read)",
                            0.0,
                        )
                    )
            if self.plan.fsck:
                for v in vols:
                    if v.fstype:
                        self.say(f"replay and fsck -n {d.name} volume {v.number} ({v.fstype})")
                        self.checks.append(fsck_volume(res, fuse / d.name, d.name, v, work))
        self.mark("fsck")
        wanted = {p.volume or "" for p in file_probes}
        for key in sorted(wanted):
            for d, v in all_vols:
                if find_volume([v], key or None) and key not in mounts:
                    try:
                        mounts[key] = mount_volume(res, fuse / d.name, v, work / f"vol-{v.number}")
                    except OpenBDRError as exc:
                        self.checks.append(
                            Check(f"mount volume {key or v.number}", "mount", False, str(exc), 0.0)
                        )
        return mounts

    def run_vm(self, res: Resources, work: Path, ctx: ProbeContext) -> None:
        accel = choose_accel(
            force=self.opts.accel or (None if self.plan.accel == "auto" else self.plan.accel)
        )
        self.report.accel = {"name": accel.name, "reason": accel.reason}
        self.say(f"accelerator {accel.name}: {accel.reason}")
        readers = [self.repo.reader(self.point, d) for d in self.point.disks]
        for r in readers:
            res.stack.callback(r.close)
        direct = direct_drives(readers)  # block mode on RBD: QEMU reads the snapshots
        if direct is not None:
            drives: list[str | DirectDrive] = list(direct)
            names, where = [d.name for d in self.point.disks], "in place from their snapshots"
        else:
            exports = res.stack.enter_context(
                serve_point(
                    self.repo,
                    self.point,
                    unix_path=str(work / "nbd.sock"),
                    overlay=True,
                    tmpdir=str(work),
                )
            )
            drives = [e.uri for e in exports]
            names, where = [e.name for e in exports], "from the repository"
        self.mark("exported")
        forwards = {}
        if self.plan.network == "probes":
            forwards = {port: free_port() for port in self.plan.forwarded_ports}
        cfg = VmConfig(
            drives=drives,
            accel=accel,
            memory_mib=self.plan.memory,
            cpus=self.plan.cpus,
            network=self.plan.network == "probes",
            forwards=forwards,
            disk_bus=self.plan.disk_bus,
            guest_agent=any(p.type == "guest-exec" for p in self.plan.probes),
        )
        vm = Vm(cfg, work, res.registry)
        res.stack.callback(vm.stop)
        self.say(f"booting {', '.join(names)} {where}")
        vm.start()
        self.mark("vm_started")
        ctx.vm, ctx.ports = vm, forwards
        ctx.qga_path = vm.qga_path if cfg.guest_agent else None
        try:
            self.probe(ctx, skip={"file"})
        finally:
            if self.plan.screenshot and vm.running():
                try:
                    self.screenshot = vm.screendump(work / "screenshot.png").read_bytes()
                except OpenBDRError as exc:
                    self.say(f"no screenshot: {exc}")
            self.report.console_tail = _tail(vm.console_text())
            if not vm.running():
                self.report.reason = f"QEMU exited: {vm.stderr_tail()[-300:]}"

    def probe(self, ctx: ProbeContext, skip: set[str] | None = None) -> None:
        for p in self.plan.probes:
            if skip and p.type in skip:
                continue
            self.say(f"probe {p.name} ({p.type})")
            r = run_probe(p, ctx)
            self.results.append(r)
            self.say(f"probe {p.name}: {'PASS' if r.ok else 'FAIL'}: {r.detail}")

    # -- the whole drill -----------------------------------------------------
    def run(self) -> Report:
        rep = self.report
        try:
            with Resources(self.id) as res:
                try:
                    work = res.tempdir()
                    mounts = self.pre_boot(res, work)
                    ctx = ProbeContext(t0=self.t0, mounts=mounts)
                    if self.plan.kind == "vm":
                        self.probe(ctx, skip=LIVE_PROBES)
                    failed = [c for c in self.checks if not c.ok]
                    if failed:
                        rep.reason = f"{failed[0].name}: {failed[0].detail}"
                        self.say(f"not starting: {rep.reason}")
                    elif self.plan.kind == "vm":
                        self.run_vm(res, work, ctx)
                    else:
                        from .service import run_service

                        run_service(self, res, work, ctx)
                finally:
                    t = time.monotonic()
                    self.say("tearing down")
                    res.stack.close()
                    rep.timings["teardown_s"] = round(time.monotonic() - t, 3)
        except OpenBDRError as exc:
            self.error = str(exc)
        except KeyboardInterrupt:  # SIGINT, or SIGTERM mapped to it by the CLI
            self.error = "interrupted; everything was torn down"
            self.finish()
            raise
        self.finish()
        return rep

    def finish(self) -> None:
        rep = self.report
        rep.checks = [c.to_json() for c in self.checks]
        rep.probes = [r.to_json() for r in self.results]
        live = [r for r in self.results if r.type != "file"]  # file probes run before start
        passed = [r.passed_at for r in live if r.ok and r.passed_at is not None]
        rep.rto_first_s = round(min(passed), 3) if passed else None
        all_ok = bool(self.results) and all(r.ok for r in self.results)
        all_ok = all_ok and all(c.ok for c in self.checks)
        rep.rto_all_s = round(max(passed), 3) if all_ok and passed else None
        if self.error:
            rep.verdict, rep.reason = "error", self.error
        elif all_ok and {p.name for p in self.plan.probes} <= {r.name for r in self.results}:
            rep.verdict, rep.reason = "passed", "every check and probe passed"
        else:
            rep.verdict = "failed"
            bad = [r for r in self.results if not r.ok]
            if not rep.reason:
                rep.reason = (
                    f"probe {bad[0].name}: {bad[0].detail}" if bad else "not all probes ran"
                )
        rep.finished = _now()
        rep.duration_s = round(time.monotonic() - self.t0, 3)
        store_report(self.repo, rep, self.screenshot)
        if self.opts.mark_verified:
            self._mark_point()

    def _mark_point(self) -> None:
        rep = self.report
        p = self.repo.point(self.point.host, self.point.id)  # fresh: a scrub may have run
        p.drill = {"id": rep.id, "verdict": rep.verdict, "finished": rep.finished}
        if rep.verdict == "passed" and p.status in ("ok", "verified"):
            p.status, p.verified_at = "verified", rep.finished
        elif rep.verdict != "passed" and p.status == "verified":
            p.status = "ok"
        self.repo.update_point(p)


def run_drill(
    repo: Target, host: str, point: str, plan: Plan, opts: DrillOptions | None = None
) -> Report:
    return Drill(repo, repo.point(host, point), plan, opts or DrillOptions()).run()
