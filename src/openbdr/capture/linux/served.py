"""Source type `agent`: a host whose disks the OpenBDR agent on that host tracks.

Nothing but that agent can capture such a host (its change tracker lives in the daemon),
so the server sends the host's sync jobs to the agent's pool and the daemon
(`agent run --config agent.toml` with `[control]`) runs them on the host it tracks: the
change-token chain stays with the tracker. The daemon's own syncs (interval, `agent sync`)
and the jobs' take one lock, so captures of the host never overlap.
"""

from __future__ import annotations

import threading
from typing import Any

from ...errors import SourceError
from ...extents import Extent
from ..base import ChangeToken, Host, Snapshot
from ..registry import SourceType, register_source

#: host name -> the tracked host of the daemon running in this process
_LIVE: dict[str, Host] = {}


class _HeldSnapshot(Snapshot):
    """A snapshot that holds the host's sync lock until it is released."""

    def __init__(self, inner: Snapshot, lock: threading.Lock) -> None:
        self.inner = inner
        self.lock = lock
        self.disks = inner.disks
        self.consistency = inner.consistency

    def settle(self) -> dict[str, list[Extent]]:
        return self.inner.settle()

    def committed(self) -> None:
        self.inner.committed()

    def release(self) -> None:
        try:
            self.inner.release()
        finally:
            self.lock.release()


class Serialized(Host):
    """The daemon's host for jobs: a capture waits for (and blocks) the daemon's syncs."""

    def __init__(self, host: Host, lock: threading.Lock) -> None:
        self.host = host
        self.name = host.name
        self.lock = lock

    def snapshot(self, since: ChangeToken | None) -> Snapshot:
        self.lock.acquire()
        try:
            return _HeldSnapshot(self.host.snapshot(since), self.lock)
        except BaseException:
            self.lock.release()
            raise

    def describe(self) -> str:
        return self.host.describe()


def serve(host: Host, lock: threading.Lock) -> None:
    """Offer the daemon's tracked host to this process's job workers."""
    _LIVE[host.name] = Serialized(host, lock)


def withdraw(name: str) -> None:
    _LIVE.pop(name, None)


def _open(name: str, spec: dict[str, Any]) -> Host:
    host = _LIVE.get(name)
    if host is None:
        raise SourceError(
            f"host {name} is captured by the OpenBDR agent on it, and this worker is not that "
            "agent",
            "give the host the agent's own pool (host add --pool) and run `openbdr agent run "
            "--config agent.toml` with a [control] table on the host",
        )
    return host


def _validate(spec: dict[str, Any]) -> None:
    extra = set(spec) - {"type"}
    if extra:
        raise SourceError(
            f"source type agent takes no settings (got {', '.join(sorted(extra))})",
            "the agent's configuration file on the host names its disks",
        )


register_source(
    SourceType(
        "agent",
        _open,
        _validate,
        "disks tracked by the OpenBDR agent on the host (its jobs run in the agent's pool)",
        {},
    )
)
