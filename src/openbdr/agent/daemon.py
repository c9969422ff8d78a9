"""`openbdr agent run`: tracking between syncs, syncs on an interval or on request.

The daemon starts a change tracker per disk, then serves requests on a Unix socket (one
JSON line in, one out: `sync`, `status`) and runs a sync every `interval` seconds. With a
`[control]` table it also leases its pool's jobs from the control-plane server; sync jobs
of its own host run on the tracked host (source type `agent`), and the server's policy
then schedules syncs instead of `interval`. Syncs never overlap. SIGTERM/SIGINT stop it
cleanly: the trackers save their bitmaps as clean and leave their tracing instances
recording, so a restart continues the same session when no event was lost meanwhile. A
killed agent cannot say what it missed: its next sync is a hash-compare resync.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..capture.linux import served
from ..capture.linux.source import AgentHost
from ..errors import OpenBDRError
from ..store.target import open_target
from ..sync import SyncOptions, disk_capture, sync
from .config import AgentConfig, run_dir
from .hosts import AnyHost, open_host

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        if config.password_file:
            os.environ["OPENBDR_PASSWORD_FILE"] = config.password_file
        self.repo = open_target(config.repo)
        self.host: AnyHost = open_host(config)
        self.sync_lock = threading.Lock()
        self.stopping = threading.Event()
        self.last: dict[str, Any] | None = None
        self.next_at: float | None = None
        self.started = time.time()
        self._server: socketserver.UnixStreamServer | None = None
        self.puller: Any = None  # control.agent.JobPuller when [control] is configured

    # -- syncs ------------------------------------------------------------------------
    def sync(self) -> dict[str, Any]:
        with self.sync_lock:
            t0 = time.monotonic()
            try:
                point = sync(self.repo, self.host, SyncOptions(compression=self.config.compression))
            except OpenBDRError as exc:
                self.last = {"ok": False, "error": str(exc), "at": _now()}
                log.error("sync failed: %s", exc)
                return self.last
            disks = []
            for d in point.disks:
                cap = disk_capture(point.token, d.name)
                disks.append(
                    {
                        "name": d.name,
                        "mode": d.mode,
                        "fallback_reason": d.fallback_reason,
                        "read_bytes": d.read_bytes,
                        "stored_bytes": d.stored_bytes,
                        "device_read_bytes": cap.get("device_read_bytes"),
                        "staged_bytes": cap.get("staged_bytes"),
                        "pass_bytes": cap.get("pass_bytes"),
                        "freeze_s": [f["seconds"] for f in cap.get("freezes", [])],
                        "freezes": cap.get("freezes", []),
                    }
                )
            self.last = {
                "ok": True,
                "point": point.id,
                "consistency": point.consistency,
                "seconds": round(time.monotonic() - t0, 3),
                "disks": disks,
                "at": _now(),
            }
            log.info("sync done: %s", json.dumps(self.last))
            return self.last

    def status(self) -> dict[str, Any]:
        disks = []
        for name, tr in self.host.trackers.items():
            disks.append(
                {
                    "name": name,
                    "device": tr.dev.path,
                    "session": tr.session,
                    "generation": tr.generation,
                    "write_events": tr.events,
                    "written_bytes": tr.written_bytes,
                    "started_new_session": tr.start_reason,
                }
            )
        return {
            "host": self.config.host,
            "repo": self.config.repo,
            "pid": os.getpid(),
            "up_s": round(time.time() - self.started, 1),
            "syncing": self.sync_lock.locked(),
            "interval": self.config.interval,
            "next_sync_in_s": None
            if self.next_at is None
            else round(max(0.0, self.next_at - time.monotonic()), 1),
            "disks": disks,
            "last_sync": self.last,
            "control": None if self.puller is None else self.puller.describe(),
        }

    def unprotect(self, disk: str) -> dict[str, Any]:
        """Stop tracking `disk` and remove what the agent made for it (after a running
        sync). The configuration file is edited by the caller."""
        if not isinstance(self.host, AgentHost):
            return {
                "ok": False,
                "error": "unprotect handles traced disks; detach a copy-on-write volume with "
                "`openbdr agent volume detach`, a driver snapshot with the driver's tool",
            }
        with self.sync_lock:
            try:
                removed = self.host.unprotect(disk)
            except OpenBDRError as exc:
                return {"ok": False, "error": str(exc)}
        log.info("disk %s unprotected: %s", disk, "; ".join(removed) or "nothing to remove")
        return {"ok": True, "disk": disk, "removed": removed}

    def _record(self) -> Path:
        """Say which configuration this daemon uses, so `agent sync|status` find it."""
        d = run_dir()
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{os.getpid()}.json"
        rec = {"pid": os.getpid(), "config": str(self.config.path.resolve()),
               "socket": str(self.config.socket)}  # fmt: skip
        f.write_text(json.dumps(rec))
        return f

    # -- serving ----------------------------------------------------------------------
    def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "sync":
            return self.sync()
        if cmd == "status":
            return self.status()
        if cmd == "unprotect":
            return self.unprotect(str(req.get("disk")))
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _serve(self) -> None:
        agent = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    reply = agent._handle(json.loads(line or b"{}"))
                except Exception as exc:  # a bad request must not kill the daemon
                    log.exception("request failed")
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        path = self.config.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
                raise OpenBDRError(
                    f"an agent already listens on {path}",
                    "stop it first (systemctl stop openbdr-agent)",
                )
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink()
            finally:
                probe.close()
        server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        server.daemon_threads = True
        os.chmod(path, 0o600)
        self._server = server
        threading.Thread(target=server.serve_forever, name="agent-socket", daemon=True).start()

    def run(self) -> None:
        """Run until SIGTERM/SIGINT."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        link = self.config.control
        if link is not None:  # a missing credential fails here, before tracking starts
            from ..control.agent import JobPuller

            self.puller = JobPuller(link.credential, link.workers, link.poll)
        self.host.start()
        record: Path | None = None
        try:
            self._serve()
            record = self._record()
            log.info("agent for host %s up: %s", self.config.host, self.host.describe())
            interval = self.config.interval
            if self.puller is not None:
                served.serve(self.host, self.sync_lock)
                self.puller.start()
                if interval > 0:
                    log.info("enrolled: the server's policy schedules syncs, not interval")
                interval = 0
            self.next_at = time.monotonic() + interval if interval > 0 else None
            while not self.stopping.is_set():
                if self.next_at is not None and time.monotonic() >= self.next_at:
                    self.sync()
                    self.next_at = time.monotonic() + interval
                self.stopping.wait(0.5)
        finally:
            if self.puller is not None:  # running jobs stop at a checkpoint, reported
                self.puller.stop()
                served.withdraw(self.host.name)
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self.config.socket.unlink(missing_ok=True)
            if record is not None:
                record.unlink(missing_ok=True)
            with self.sync_lock:  # let a running sync finish before the trackers stop
                self.host.stop()
            log.info("agent stopped")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def request(sock_path: str, cmd: str, timeout: float = 3600.0, **kw: Any) -> dict[str, Any]:
    """Send one command to a running agent and return its answer."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
    except (FileNotFoundError, ConnectionRefusedError):
        raise OpenBDRError(
            f"no agent listens on {sock_path}", "start it: openbdr agent run --config FILE"
        ) from None
    try:
        s.sendall(json.dumps({"cmd": cmd, **kw}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            part = s.recv(65536)
            if not part:
                break
            data += part
    finally:
        s.close()
    if not data:
        raise OpenBDRError(f"the agent on {sock_path} closed the connection", "see its log")
    reply: dict[str, Any] = json.loads(data)
    return reply
