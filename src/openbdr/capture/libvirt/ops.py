"""The libvirt side of the agentless flow: checkpoints and pull-mode backups.

A snapshot is ONE pull-mode backup job of all the domain's disks (they are then from
the same instant) that also creates the next checkpoint. The job exports each disk over
NBD on a unix socket in a scratch directory of this run, with the dirty bitmap since the
previous checkpoint where the disk is read incrementally. Ending the job (abort, the
documented end of a pull backup) and removing the scratch directory end the session;
the checkpoint stays as the next base until the point after it commits. Everything is
named `openbdr-<host>-<time>-<pid>` (`agentless.owned_name`): checkpoint, scratch
directory, hence the socket in a backup job's XML. A later run of the host removes what
carries its prefix, except the base its previous point names.

A shut-off domain has no QEMU to run a backup: its images are read directly through a
private read-only `qemu-nbd`, as a full pass, and the previous checkpoint stays the
base (its bitmap still holds every change since, which covers the next sync's).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt

from ...errors import SourceError
from ..agentless import DiskPlan, PlatformOps, Session, is_owned, owned_prefix
from ..platform import PlatformError
from . import DEFAULT_SCRATCH, domxml
from .conn import failed, message
from .nbdread import NbdDisk, connect_image, connect_unix

log = logging.getLogger(__name__)

SHUT_OFF = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED)


@dataclass
class LibvirtSession(Session):
    scratch: Path | None = None
    socket: str | None = None

    def export_uri(self, disk: str) -> str | None:
        """The backup job's NBD export of `disk` (for tools and tests reading the same
        point-in-time view independently); None for a shut-off domain."""
        return f"nbd+unix:///{disk}?socket={self.socket}" if self.socket else None


class LibvirtOps(PlatformOps):
    source = "libvirt"

    def __init__(
        self, conn: libvirt.virConnect, uri: str, dom: libvirt.virDomain, options: dict[str, Any]
    ) -> None:
        self.conn = conn
        self.uri = uri
        self.dom = dom
        self.vm = dom.name()
        self.scratch_root = Path(str(options.get("scratch_dir") or DEFAULT_SCRATCH))
        self.in_flight = int(options.get("in_flight") or 4)
        self.connections = int(options.get("connections") or 4)
        self.quiesce = str(options.get("quiesce") or "auto")  # auto, never, required
        if self.quiesce not in ("auto", "never", "required"):
            raise PlatformError(
                f"libvirt option quiesce={self.quiesce!r} is not one of auto, never, required"
            )

    # -- what the domain has -----------------------------------------------------
    def _xml(self) -> str:
        try:
            return self.dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            raise failed(exc, f"read the definition of VM {self.vm}", self.uri) from None

    def domain_disks(self) -> list[domxml.DomDisk]:
        return domxml.disks(self._xml())

    def disks(self) -> dict[str, int]:
        out = {}
        for d in self.domain_disks():
            why = d.unsupported()
            if why is not None:
                raise PlatformError(f"VM {self.vm} on {self.uri} cannot be backed up: {why}")
            try:
                out[d.target] = int(self.dom.blockInfo(d.target)[0])
            except libvirt.libvirtError as exc:
                raise failed(exc, f"size disk {d.target} of VM {self.vm}", self.uri) from None
        if not out:
            raise PlatformError(f"VM {self.vm} on {self.uri} has no disk to protect")
        return out

    def owned(self, host: str) -> list[str]:
        try:
            names = [c.getName() for c in self.dom.listAllCheckpoints(0)]
        except libvirt.libvirtError as exc:
            raise failed(exc, f"list the checkpoints of VM {self.vm}", self.uri) from None
        return sorted(n for n in names if is_owned(n, host))

    def tracks(self, snapshot: str) -> set[str]:
        try:
            cp = self.dom.checkpointLookupByName(snapshot, 0)
            return domxml.checkpoint_disks(cp.getXMLDesc(0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                return set()
            raise failed(exc, f"read checkpoint {snapshot} of VM {self.vm}", self.uri) from None

    # -- leftovers -------------------------------------------------------------------
    def _backup_job(self) -> str | None:
        try:
            return self.dom.backupGetXMLDesc(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (
                libvirt.VIR_ERR_NO_DOMAIN_BACKUP,
                libvirt.VIR_ERR_OPERATION_INVALID,
            ):
                return None  # no job, or the domain is not running
            raise failed(exc, f"read the backup job of VM {self.vm}", self.uri) from None

    def _abort_backup(self, timeout: float = 60.0) -> None:
        """End the backup job, and wait until libvirt has torn it down (the abort
        returns first; a new backup or a checkpoint deletion would race it)."""
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise failed(exc, f"end the backup job of VM {self.vm}", self.uri) from None
        deadline = time.monotonic() + timeout
        while self._backup_job() is not None:
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"the backup job of VM {self.vm} on {self.uri} did not end "
                    f"within {timeout:.0f} s of its abort",
                    "end it with virsh domjobabort; the next sync removes what is left",
                )
            time.sleep(0.05)

    def cleanup(self, host: str) -> list[str]:
        removed = []
        job = self._backup_job()
        if job is not None:
            sock, _scratch = domxml.backup_paths(job)
            if not Path(sock).parent.name.startswith(owned_prefix(host)):
                raise PlatformError(
                    f"VM {self.vm} on {self.uri} has a backup job that OpenBDR did not start "
                    f"(NBD socket {sock})",
                    "wait for it to end or end it (virsh domjobabort)",
                )
            self._abort_backup()
            removed.append(f"backup job ({sock})")
        if self.scratch_root.is_dir():
            for d in self.scratch_root.iterdir():
                if d.name.startswith(owned_prefix(host)):
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(str(d))
        return removed

    # -- the snapshot --------------------------------------------------------------
    def take(self, host: str, name: str, base: str | None, plans: list[DiskPlan]) -> LibvirtSession:
        try:
            state = self.dom.state()[0]
        except libvirt.libvirtError as exc:
            raise failed(exc, f"read the state of VM {self.vm}", self.uri) from None
        if state in SHUT_OFF:
            return self._take_images(base, plans)
        return self._take_backup(name, base, plans)

    def _take_images(self, base: str | None, plans: list[DiskPlan]) -> LibvirtSession:
        """A shut-off domain: its images through private read-only `qemu-nbd`s. A disk
        tracked since the base checkpoint is read incrementally from the checkpoint's
        bitmap in the qcow2 file (libvirt cannot make a checkpoint of an inactive domain,
        so the base stays: its bitmap still covers every later change)."""
        by_target = {d.target: d for d in self.domain_disks()}
        disks: list[NbdDisk] = []
        notes = ["quiesce: none, the domain is shut off: its disk images are read as they are"]
        try:
            for p in plans:
                d = by_target[p.name]
                disk = None
                if p.incremental and base:
                    try:
                        disk = NbdDisk(
                            self.source,
                            p,
                            base,
                            connect_image(d.source, d.format, base),
                            base,
                            self.in_flight,
                            d.source,
                            connections=self.connections,
                        )
                    except SourceError as exc:
                        p = replace(
                            p,
                            incremental=False,
                            fallback_reason=f"the domain is shut off and the bitmap of "
                            f"checkpoint {base} in {d.source} is unusable ({exc}): full pass",
                        )
                if disk is None:
                    disk = NbdDisk(
                        self.source,
                        p,
                        base,
                        connect_image(d.source, d.format),
                        None,
                        self.in_flight,
                        d.source,
                        connections=self.connections,
                    )
                disks.append(disk)
        except BaseException:
            for x in disks:
                x.close()
            raise
        return LibvirtSession(list(disks), "crash", keep=base, created=None, notes=notes)

    def _take_backup(self, name: str, base: str | None, plans: list[DiskPlan]) -> LibvirtSession:
        scratch = self.scratch_root / name
        scratch.mkdir(parents=True, mode=0o700)
        sock = str(scratch / "nbd.sock")
        if len(sock) > 100:
            shutil.rmtree(scratch, ignore_errors=True)
            raise PlatformError(
                f"scratch directory {self.scratch_root} is too deep for a unix socket path",
                "set the libvirt option scratch_dir to a shorter path",
            )
        notes: list[str] = []
        try:
            frozen = self._freeze(notes)
        except BaseException:  # quiesce=required and no freeze: nothing of this run stays
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        try:
            self.dom.backupBegin(
                domxml.backup_xml(sock, str(scratch), base, plans),
                domxml.checkpoint_xml(name, [p.name for p in plans]),
                0,
            )
        except libvirt.libvirtError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise failed(exc, f"start a backup of VM {self.vm}", self.uri) from None
        finally:
            if frozen:
                self._thaw(notes)
        session = LibvirtSession(
            [],
            "filesystem" if frozen else "crash",
            keep=name,
            created=name,
            notes=notes,
            scratch=scratch,
            socket=sock,
        )
        try:
            for p in plans:
                bitmap = base if p.incremental else None
                session.disks.append(
                    NbdDisk(
                        self.source,
                        p,
                        name,
                        connect_unix(sock, p.name),
                        bitmap,
                        self.in_flight,
                        f"{self.vm}:{p.name}",
                        connections=self.connections,
                    )
                )
        except BaseException:
            self.end(session)
            self.delete(name)
            raise
        return session

    def _freeze(self, notes: list[str]) -> bool:
        """Freeze the guest's file systems through the QEMU guest agent, when asked and
        present. Every outcome leaves a note for the point (`Snapshot.notes`): how it was
        quiesced, or why not."""
        if self.quiesce == "never":
            notes.append("quiesce: not asked (option quiesce=never): crash-consistent")
            return False
        if not domxml.has_guest_agent(self._xml()):
            if self.quiesce == "required":
                raise PlatformError(
                    f"VM {self.vm} has no QEMU guest agent channel, and quiesce=required",
                    "add an org.qemu.guest_agent.0 channel and run qemu-guest-agent in the guest",
                )
            notes.append("quiesce: the domain has no QEMU guest agent channel: crash-consistent")
            return False
        try:
            frozen = self.dom.fsFreeze(None, 0)
        except libvirt.libvirtError as exc:
            if self.quiesce == "required":
                raise PlatformError(
                    f"the guest agent of VM {self.vm} did not freeze its file systems: {message(exc)}",
                    "check that qemu-guest-agent runs in the guest",
                ) from None
            notes.append(
                f"quiesce: the guest agent did not freeze the file systems ({message(exc)}): "
                "crash-consistent"
            )
            log.warning("VM %s: %s", self.vm, notes[-1])
            return False
        notes.append(
            f"quiesce: the QEMU guest agent froze {frozen} file system(s) for the snapshot: "
            "filesystem-consistent"
        )
        return True

    def _thaw(self, notes: list[str]) -> None:
        try:
            self.dom.fsThaw(None, 0)
        except libvirt.libvirtError as exc:
            notes.append(f"the guest agent did not thaw the file systems: {message(exc)}")
            log.error("VM %s: could not thaw the guest file systems: %s", self.vm, message(exc))

    def end(self, session: Session) -> None:
        assert isinstance(session, LibvirtSession)
        if session.scratch is None:
            return
        try:
            job = self._backup_job()
            if job is not None and domxml.backup_paths(job)[0] == session.socket:
                self._abort_backup()
        finally:
            shutil.rmtree(session.scratch, ignore_errors=True)

    def delete(self, snapshot: str) -> None:
        try:
            self.dom.checkpointLookupByName(snapshot, 0).delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                return
            raise failed(exc, f"delete checkpoint {snapshot} of VM {self.vm}", self.uri) from None
