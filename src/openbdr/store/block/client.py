"""The gateway's HTTPS client: one keep-alive connection per thread, retries, clear errors.

`gateway://HOST:PORT[?ca=CERT.pem&token_file=PATH&retry=SECONDS&tls=off]`. The token comes
from `token_file`, else `$OPENBDR_GATEWAY_TOKEN`, else the file `$OPENBDR_GATEWAY_TOKEN_FILE`.
Every request the gateway offers is idempotent (a block sent twice is written once, a
commit retried returns the committed point), so a dropped connection or a restarted
gateway is retried for up to `retry` seconds (default 120) before the sync gives up.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ...errors import CorruptionError, LockedError, OpenBDRError


class GatewayError(OpenBDRError):
    """The gateway refused a request (the message is the gateway's own one line)."""


class GatewayAuthError(GatewayError):
    """A missing or wrong credential, or a host the credential may not touch."""


class GatewayMissing(GatewayError):
    """The gateway lacks blocks a commit names."""


class GatewayFull(GatewayError):
    """The gateway's volume store is out of space."""


class GatewayUnreachable(GatewayError):
    """No answer from the gateway within the retry window."""


def _error(status: int, body: bytes, what: str) -> OpenBDRError:
    exc = _make_error(status, body, what)
    try:
        exc.detail = json.loads(body)  # type: ignore[attr-defined]
    except ValueError:
        exc.detail = {}  # type: ignore[attr-defined]
    return exc


def _make_error(status: int, body: bytes, what: str) -> OpenBDRError:
    try:
        msg = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        msg = body[:200].decode(errors="replace") or f"HTTP {status}"
    msg = f"gateway: {msg}"
    if status in (401, 403):
        return GatewayAuthError(msg, "check the agent's token (token_file= in the target URL)")
    if status == 409:
        return GatewayMissing(msg)
    if status == 422:
        return CorruptionError(msg)
    if status == 423:
        return LockedError(msg)
    if status == 507:
        return GatewayFull(msg, "free space on the DR site, then run the sync again")
    return GatewayError(msg if status != 500 else f"{msg} ({what})")


class GatewayClient:
    def __init__(self, url: str, token: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "gateway" or not parts.hostname:
            raise OpenBDRError(f"not a gateway URL: {url!r}", "use gateway://HOST:PORT")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.host = parts.hostname
        self.port = parts.port or 8443
        self.url = f"gateway://{self.host}:{self.port}"
        self.retry = float(q.get("retry", 120))
        self.tls = q.get("tls", "on") != "off"
        self.ctx: ssl.SSLContext | None = None
        if self.tls:
            self.ctx = ssl.create_default_context(cafile=q.get("ca") or None)
        if token is None:
            path = q.get("token_file") or os.environ.get("OPENBDR_GATEWAY_TOKEN_FILE")
            token = os.environ.get("OPENBDR_GATEWAY_TOKEN") if not q.get("token_file") else None
            if token is None and path:
                try:
                    with open(path) as f:
                        token = f.read().strip()
                except OSError as exc:
                    raise GatewayAuthError(
                        f"cannot read the gateway token file {path}: {exc.strerror}"
                    ) from None
        if not token:
            raise GatewayAuthError(
                f"no credential for {self.url}",
                "add ?token_file=PATH to the URL or set OPENBDR_GATEWAY_TOKEN",
            )
        self.token = token
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.ctx is not None:
                c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=600)
            else:
                c = http.client.HTTPConnection(self.host, self.port, timeout=600)
            c.connect()
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local.conn = c
        return c

    def _drop(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def call(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | list[Any] | None = None,
        *,
        lease: str | None = None,
        raw: bool = False,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        data: bytes | None
        if isinstance(body, dict | list):
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        else:
            data = body
        if lease:
            headers["X-OpenBDR-Lease"] = lease
        deadline = time.monotonic() + self.retry
        delay = 0.2
        while True:
            try:
                conn = self._conn()
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                out = resp.read()
                status = resp.status
            except ssl.SSLCertVerificationError as exc:
                self._drop()
                raise GatewayAuthError(
                    f"gateway {self.url}: its TLS certificate is not trusted ({exc.reason})",
                    "pass the gateway's certificate with ?ca=PATH",
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if time.monotonic() > deadline:
                    raise GatewayUnreachable(
                        f"gateway {self.url} unreachable for {self.retry:.0f} s ({exc})",
                        "start it or check the network; the sync resumes from its checkpoint",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if status == 200:
                return out if raw else json.loads(out)
            raise _error(status, out, f"{method} {path}")

    def close(self) -> None:
        self._drop()
