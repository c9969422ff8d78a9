"""`openbdr agent`: a remote worker on a protected host or a sync proxy.

It enrols once with a one-time token (the credential it receives is saved 0600), then
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
        error: str | None,
    ) -> str:
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


def run(config: Path, workers: int = 1, poll: float = 2.0) -> None:
    try:
        cfg = json.loads(config.read_text())
    except FileNotFoundError:
        raise OpenBDRError(f"agent configuration {config} does not exist",
                           "enrol first: `openbdr agent enrol --server URL --token TOKEN`") from None
    load_plugins()
    client = Client(cfg["server"], cfg["credential"], verify=cfg.get("verify", True))
    threads = [
        Worker(HttpBroker(client), f"agent:{cfg['name']}:{i}", poll=poll) for i in range(workers)
    ]
    stop = threading.Event()

    def on_signal(_sig: int, _frm: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for t in threads:
        t.start()
    log.info("agent %s (pool %s) polling %s with %d worker(s)", cfg["name"], cfg["pool"],
             cfg["server"], workers)
    stop.wait()
    for t in threads:
        t.stop()
    for t in threads:
        t.join(timeout=60)
    client.close()
