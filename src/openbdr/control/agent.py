"""The control plane's side of `openbdr agent`: enrolment and pulling jobs over HTTPS.

Used by `agent run` as a sync proxy (a JSON credential: jobs only) and inside the tracking
daemon (a TOML configuration with `[control]`: jobs besides tracked disks). It enrols once with a one-time token (the credential it receives is saved 0600), then
only makes outbound HTTPS calls: lease a job of its pool, heartbeat with progress, and
report the outcome. If it dies, its lease expires and another agent of the pool (or
this one, restarted) resumes the job from the sync checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import OpenBDRError
from .client import Client
from .jobs import JobSpec, LeaseLost
from .registry import load_plugins
from .worker import Worker

log = logging.getLogger(__name__)


class HttpBroker:
    def __init__(self, client: Client) -> None:
        self.client = client

    @staticmethod
    def _suffix(worker: str) -> str:
        return worker.rsplit(":", 1)[-1]

    def lease(self, worker: str) -> JobSpec | None:
        got = self.client.post("/agent/lease", {"worker": self._suffix(worker)})
        return JobSpec.from_json(got["job"]) if got and got.get("job") else None

    def heartbeat(
        self, job_id: int, worker: str, progress: dict[str, Any], logs: list[tuple[str, str]]
    ) -> str:
        try:
            got = self.client.post(f"/agent/jobs/{job_id}/heartbeat",
                                   {"worker": self._suffix(worker), "progress": progress,
                                    "logs": [list(x) for x in logs]})
        except OpenBDRError as exc:
            if "no longer holds the lease" in str(exc) or "not a job of pool" in str(exc):
                raise LeaseLost(str(exc)) from None
            raise
        return str(got["state"])

    def finish(
        self, job_id: int, worker: str, outcome: str, result: dict[str, Any] | None,
        error: str | None, progress: dict[str, Any], logs: list[tuple[str, str]],
    ) -> str:
        """The last progress and logs go in a heartbeat first: the pull API's finish
        body stays what agents and servers of every version agree on."""
        if progress or logs:
            self.heartbeat(job_id, worker, progress, logs)
        try:
            got = self.client.post(f"/agent/jobs/{job_id}/finish",
                                   {"worker": self._suffix(worker), "outcome": outcome,
                                    "result": result, "error": error})
        except OpenBDRError as exc:
            if "no longer holds the lease" in str(exc):
                raise LeaseLost(str(exc)) from None
            raise
        return str(got["state"])


def enrol(server: str, token: str, name: str, config: Path, verify: bool | str = True) -> dict[str, Any]:
    client = Client(server, None, verify=verify)
    try:
        got = client.post("/agents/enrol", {"token": token, "name": name,
                                            "version": __version__})
    finally:
        client.close()
    config.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"server": server, "name": got["name"], "pool": got["pool"],
                   "credential": got["credential"],
                   "verify": verify if isinstance(verify, str) else bool(verify)}, f)
    return dict(got)


def load_credential(config: Path) -> dict[str, Any]:
    """The credential `enrol` saved: server URL, agent name, pool, secret."""
    try:
        cfg: dict[str, Any] = json.loads(config.read_text())
    except FileNotFoundError:
        raise OpenBDRError(f"agent credential {config} does not exist",
                           "enrol first: `openbdr agent enrol --server URL --token TOKEN`") from None
    except ValueError:
        raise OpenBDRError(f"agent credential {config} is not JSON",
                           "enrol again: `openbdr agent enrol --server URL --token TOKEN`") from None
    return cfg


class JobPuller:
    """Worker threads that lease this agent's pool's jobs over HTTPS and run them."""

    def __init__(self, config: Path, workers: int = 1, poll: float = 2.0) -> None:
        self.cfg = load_credential(config)
        load_plugins()
        self.client = Client(self.cfg["server"], self.cfg["credential"],
                             verify=self.cfg.get("verify", True))
        self.threads = [Worker(HttpBroker(self.client), f"agent:{self.cfg['name']}:{i}",
                               poll=poll) for i in range(workers)]

    def describe(self) -> dict[str, Any]:
        return {"server": self.cfg["server"], "name": self.cfg["name"], "pool": self.cfg["pool"],
                "workers": len(self.threads),
                "running_jobs": [t.current.spec.id for t in self.threads if t.current]}

    def start(self) -> None:
        for t in self.threads:
            t.start()
        log.info("agent %s (pool %s) polling %s with %d worker(s)", self.cfg["name"],
                 self.cfg["pool"], self.cfg["server"], len(self.threads))

    def stop(self) -> None:
        """Stop leasing; running jobs stop at their next checkpoint and are reported."""
        for t in self.threads:
            t.stop()
        for t in self.threads:
            if t.ident is not None:  # started
                t.join(timeout=60)
        self.client.close()


def run(config: Path, workers: int = 1, poll: float = 2.0) -> None:
    """Pull and run jobs until SIGTERM/SIGINT (a proxy: no tracked disks of its own)."""
    puller = JobPuller(config, workers, poll)
    stop = threading.Event()

    def on_signal(_sig: int, _frm: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    puller.start()
    stop.wait()
    puller.stop()
