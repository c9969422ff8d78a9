"""Workers: run leased jobs, heartbeat, and stop cleanly when asked.

The same `Worker` runs inside the server (a `LocalBroker` over the catalog) and in
`openbdr agent` (an HTTP broker): it leases a job, runs the kind's runner with a
`JobContext`, and a heartbeat thread renews the lease, ships progress and logs, and
turns an operator's pause or cancel into `ctx.should_stop()` becoming true.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, Protocol

from ..errors import LockedError, OpenBDRError
from ..store import target as store
from .jobs import JobQueue, JobSpec, LeaseLost
from .registry import kind as job_kind
from .registry import load_plugins, source_type

log = logging.getLogger(__name__)
_env_lock = threading.Lock()


class JobStopped(OpenBDRError):
    """A runner stopped because the job was paused, cancelled, or lost its lease."""


class Broker(Protocol):
    def lease(self, worker: str) -> JobSpec | None: ...
    def heartbeat(
        self, job_id: int, worker: str, progress: dict[str, Any], logs: list[tuple[str, str]]
    ) -> str: ...
    def finish(
        self, job_id: int, worker: str, outcome: str, result: dict[str, Any] | None,
        error: str | None, progress: dict[str, Any], logs: list[tuple[str, str]],
    ) -> str: ...


class LocalBroker:
    """The embedded workers' way to the queue: straight to the catalog."""

    def __init__(self, queue: JobQueue, pool: str | None = None) -> None:
        self.queue = queue
        self.pool = pool

    def lease(self, worker: str) -> JobSpec | None:
        return self.queue.lease(worker, self.pool)

    def heartbeat(
        self, job_id: int, worker: str, progress: dict[str, Any], logs: list[tuple[str, str]]
    ) -> str:
        return self.queue.heartbeat(job_id, worker, progress, logs)

    def finish(
        self, job_id: int, worker: str, outcome: str, result: dict[str, Any] | None,
        error: str | None, progress: dict[str, Any], logs: list[tuple[str, str]],
    ) -> str:
        return self.queue.finish(job_id, worker, outcome, result, error, progress=progress,
                                 logs=logs)


@contextlib.contextmanager
def target_env(secrets: dict[str, Any]) -> Iterator[None]:
    """Target secrets (S3 keys…) are read from the environment when a store opens."""
    env = {k: str(v) for k, v in secrets.items() if k.isupper()}
    with _env_lock:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def open_target(url: str, secrets: dict[str, Any], init: bool = False) -> store.Target:
    """Open (or create) a catalog target with its stored credentials and passphrase."""
    passphrase = secrets.get("passphrase") or None
    with target_env(secrets):
        if init:
            try:
                return store.open_target(url, passphrase=passphrase)
            except OpenBDRError:
                return store.init_target(url, encrypt=bool(passphrase), passphrase=passphrase)
        return store.open_target(url, passphrase=passphrase)


class JobContext:
    """What a runner sees: its spec, progress and log sinks, and the stop signal."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self._progress: dict[str, Any] = {}
        self._logs: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.stop_reason: str | None = None

    # runner side
    def progress(self, **values: Any) -> None:
        with self._lock:
            self._progress.update(values)

    def log(self, message: str, level: str = "info") -> None:
        log.log(logging.getLevelName(level.upper()), "job %s: %s", self.spec.id, message)
        with self._lock:
            self._logs.append((level, message))

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def check_stop(self) -> None:
        if self._stop.is_set():
            raise JobStopped(f"job {self.spec.id} stopped ({self.stop_reason})")

    def open_target(self) -> store.Target:
        if not self.spec.target:
            raise OpenBDRError(f"job {self.spec.id} has no target")
        return open_target(self.spec.target["url"], self.spec.target.get("secrets") or {})

    def open_source(self) -> Any:
        host = self.spec.host or {}
        spec = dict(host.get("source") or {})
        return source_type(spec).open(host["name"], spec)

    # heartbeat side
    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def drain(self) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        with self._lock:
            logs, self._logs = self._logs, []
            return dict(self._progress), logs


class Worker(threading.Thread):
    def __init__(
        self,
        broker: Broker,
        name: str,
        poll: float = 1.0,
        heartbeat: float | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.broker = broker
        self.worker_id = name
        self.poll = poll
        self.heartbeat_every = heartbeat
        self.stopping = threading.Event()
        self.current: JobContext | None = None

    def run(self) -> None:
        load_plugins()
        while not self.stopping.is_set():
            try:
                spec = self.broker.lease(self.worker_id)
            except Exception as exc:
                log.warning("%s: cannot lease a job: %s", self.worker_id, exc)
                spec = None
            if spec is None:
                self.stopping.wait(self.poll)
                continue
            self.execute(spec)

    def stop(self) -> None:
        self.stopping.set()
        if self.current is not None:
            self.current.stop("worker shutting down")

    def execute(self, spec: JobSpec) -> None:
        ctx = JobContext(spec)
        self.current = ctx
        done = threading.Event()
        every = self.heartbeat_every or max(0.2, spec.lease_ttl / 4)
        beat = threading.Thread(
            target=self._beat, args=(ctx, done, every), name=f"{self.worker_id}-hb", daemon=True
        )
        beat.start()
        outcome, result, error = "failed", None, None
        started = time.monotonic()
        try:
            result = job_kind(spec.kind).run(ctx)
            outcome = "succeeded"
        except JobStopped:
            outcome = "stopped"
        except LockedError as exc:
            outcome, error = "retry", str(exc)
        except OpenBDRError as exc:
            outcome = "stopped" if ctx.should_stop() and _is_stop(exc) else "failed"
            error = None if outcome == "stopped" else str(exc)
            # the server's failure hooks tell errors apart by kind (an unknown VM…)
            result = {"error_types": [c.__name__ for c in type(exc).__mro__
                                      if issubclass(c, OpenBDRError)]} \
                if outcome == "failed" else None
        except Exception as exc:
            log.error("job %s crashed:\n%s", spec.id, traceback.format_exc())
            outcome, error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            done.set()
            beat.join()
        log.info("job %s (%s) %s in %.1f s", spec.id, spec.kind, outcome,
                 time.monotonic() - started)
        if ctx.stop_reason == "lease lost":
            self.current = None
            return  # someone else owns the job now
        progress, logs = ctx.drain()
        try:
            self.broker.finish(spec.id, self.worker_id, outcome, result, error, progress, logs)
        except LeaseLost:
            log.warning("job %s: lease lost before it could finish", spec.id)
        except Exception as exc:
            log.error("job %s: cannot report the outcome: %s", spec.id, exc)
        self.current = None

    def _beat(self, ctx: JobContext, done: threading.Event, every: float) -> None:
        while not done.wait(every):
            progress, logs = ctx.drain()
            try:
                state = self.broker.heartbeat(ctx.spec.id, self.worker_id, progress, logs)
            except LeaseLost:
                ctx.stop("lease lost")
                return
            except Exception as exc:  # the server may be restarting: keep trying
                log.warning("job %s: heartbeat failed: %s", ctx.spec.id, exc)
                continue
            if state == "pausing":
                ctx.stop("pause")
            elif state == "cancelling":
                ctx.stop("cancel")


def _is_stop(exc: OpenBDRError) -> bool:
    from ..sync import SyncStopped

    return isinstance(exc, SyncStopped | JobStopped)

