"""Agent credentials of a gateway: bearer tokens, stored as SHA-256 hashes only.

`tokens.json` maps a token's hash to its agent name and the hosts it may sync (`*`: all).
The control plane issues one per agent (`openbdr gateway token add NAME`); the CLI reads
its token from a file named in the target URL (`?token_file=`) or `$OPENBDR_GATEWAY_TOKEN`.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from ..errors import OpenBDRError


class AuthError(OpenBDRError):
    """No or a wrong credential (HTTP 401)."""


class Forbidden(OpenBDRError):
    """A valid credential that may not touch this host (HTTP 403)."""


@dataclass(frozen=True)
class Agent:
    name: str
    hosts: tuple[str, ...]

    def check_host(self, host: str) -> None:
        if "*" not in self.hosts and host not in self.hosts:
            raise Forbidden(
                f"agent {self.name} may not sync host {host}",
                "issue it a token for that host (`openbdr gateway token add`)",
            )


def _digest(token: str) -> str:
    return sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime = -1.0
        self._by_hash: dict[str, Agent] = {}

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._by_hash, self._mtime = {}, -1.0
            return
        if mtime != self._mtime:  # issued or revoked while serving: read again
            raw = json.loads(self.path.read_text() or "{}")
            self._by_hash = {h: Agent(a["name"], tuple(a["hosts"])) for h, a in raw.items()}
            self._mtime = mtime

    def check(self, header: str | None) -> Agent:
        if not header or not header.startswith("Bearer "):
            raise AuthError("no credential", "send `Authorization: Bearer TOKEN`")
        digest = _digest(header[len("Bearer ") :].strip())
        with self._lock:
            self._load()
            for h, agent in self._by_hash.items():
                if hmac.compare_digest(h, digest):
                    return agent
        raise AuthError("the gateway does not know this credential", "check the token file")

    def add(self, name: str, hosts: list[str] | None = None) -> str:
        """Issue a token for agent `name`; returns it (shown once, stored hashed)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            raw = json.loads(self.path.read_text() or "{}") if self.path.exists() else {}
            raw[_digest(token)] = {"name": name, "hosts": hosts or ["*"]}
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(raw, f, indent=1)
            os.replace(tmp, self.path)
        return token

    def revoke(self, name: str) -> int:
        with self._lock:
            raw = json.loads(self.path.read_text() or "{}") if self.path.exists() else {}
            keep = {h: a for h, a in raw.items() if a["name"] != name}
            self.path.write_text(json.dumps(keep, indent=1))
            return len(raw) - len(keep)
