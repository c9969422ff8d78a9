"""Leases under `locks/`: at most one sync per host, one maintenance job per repository.

A lease is an object holding its owner and expiry; a heartbeat thread renews it by
compare-and-swap. An expired lease, or one whose owner process on this very machine is
gone (a killed sync), is taken over at once; a live one makes the caller fail clearly.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from ...errors import LockedError
from ..blobs import Blobs, NotFound
from .layout import lock_key


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_alive(pid: int, start: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19] == start
    except (OSError, IndexError):
        return False


def _pid_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


#: no lease is renewed for longer than this: a record claiming more is not a lease
MAX_TTL = 86400.0


class Lease:
    def __init__(self, blobs: Blobs, name: str, purpose: str, ttl: float = 60.0) -> None:
        self.blobs = blobs
        self.key = lock_key(name)
        self.name = name
        self.purpose = purpose
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self._content = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()
        #: when this holder first took the lease (gc protects chunks newer than a live sync)
        self.acquired = 0.0

    def _record(self) -> bytes:
        pid = os.getpid()
        return json.dumps(
            {
                "token": self.token,
                "purpose": self.purpose,
                "hostname": socket.gethostname(),
                "boot_id": _boot_id(),
                "pid": pid,
                "pid_start": _pid_start(pid),
                "expires": time.time() + self.ttl,
                "acquired": self.acquired,
            }
        ).encode()

    def _is_stale(self, data: object) -> bool:
        """Expired, its owner dead, or not a lease at all (no process could renew a record
        that is not one, nor one that claims to last more than a day): taken over."""
        if not isinstance(data, dict):
            return True
        try:
            expires = float(data.get("expires", 0))
            pid = int(data.get("pid", 0))
        except (TypeError, ValueError):
            return True
        now = time.time()
        if expires < now or expires > now + MAX_TTL:
            return True
        same_machine = (
            data.get("hostname") == socket.gethostname() and data.get("boot_id") == _boot_id()
        )
        return same_machine and not _pid_alive(pid, str(data.get("pid_start")))

    def acquire(self) -> Lease:
        self.acquired = time.time()
        for _ in range(5):
            record = self._record()
            if self.blobs.put_if_absent(self.key, record):
                self._content = record
                self._start_heartbeat()
                return self
            try:
                raw = self.blobs.get(self.key)
            except NotFound:
                continue
            try:
                held = json.loads(raw)
            except ValueError:
                held = None
            if self._is_stale(held):
                if self.blobs.replace_if(self.key, raw, record):
                    self._content = record
                    self._start_heartbeat()
                    return self
                continue
            assert isinstance(held, dict)
            raise LockedError(
                f"{self.purpose} is already running "
                f"(pid {held.get('pid')} on {held.get('hostname')})",
                "wait for it to finish; a lease of a dead process expires within "
                f"{int(self.ttl)} s",
            )
        raise LockedError(f"could not acquire lease {self.key}", "try again")

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            record = self._record()
            try:
                ok = self.blobs.replace_if(self.key, self._content, record)
            except Exception:  # a transient store error: try again next beat
                ok = False
            if not ok:
                # a renewal may have landed although its answer was lost: the token decides
                try:
                    current = self.blobs.get(self.key)
                    mine = json.loads(current).get("token") == self.token
                except Exception:
                    continue  # the store is away: try again next beat
                if not mine:
                    self.lost.set()
                    return
                record = current
            self._content = record

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        try:
            if self.blobs.get(self.key) == self._content:
                self.blobs.delete(self.key)
        except NotFound:
            pass

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
