"""`openbdr gateway serve`: the gateway's HTTPS API (HTTP/1.1, keep-alive, TLS).

One thread per connection (`ThreadingHTTPServer`); a sending agent keeps one connection
per pipeline thread, so the gateway decodes and writes as many blocks at once as the
agents send. Every request carries `Authorization: Bearer TOKEN`; a sync's requests also
carry `X-OpenBDR-Lease` (the host's lease). Answers are JSON, or raw bytes for reads;
errors are `{"error": "<one line>", "kind": "<class>"}` with a status that says what
kind (401 credential, 403 host not allowed, 404 unknown, 409 missing blocks, 422 checksum,
423 locked, 507 full, 400 anything else).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import CorruptionError, LockedError, OpenBDRError
from ..store.blobs import NotFound
from ..store.block.volumes import VolumeFull
from ..store.block.wire import API, MAX_BATCH, WireError
from ..store.manifest import RestorePoint
from .auth import Agent, AuthError, Forbidden, Tokens
from .site import BadBlock, LeaseHeld, Missing, Site, UnknownError
from .tls import self_signed

log = logging.getLogger(__name__)

MAX_BODY = MAX_BATCH
MAX_INDEX = 65 << 20  # a checkpoint of a 2 TiB disk: 64 MiB of index, its done bitmap
STATUS: list[tuple[type[BaseException], int]] = [
    (AuthError, 401),
    (Forbidden, 403),
    (UnknownError, 404),
    (NotFound, 404),
    (Missing, 409),
    (CorruptionError, 422),
    (LockedError, 423),
    (VolumeFull, 507),
    (BadBlock, 400),
    (WireError, 400),
    (OpenBDRError, 400),
]

Route = tuple[str, re.Pattern[str], Callable[..., Any]]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GatewayServer

    def setup(self) -> None:
        super().setup()
        # a response is headers then body: without NODELAY the body waits for the
        # client's delayed ACK (40 ms a block)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        # a batch of blocks is at most MAX_BATCH; a checkpoint's index is 32 bytes a block
        # (64 MiB: a 2 TiB disk)
        limit = MAX_INDEX if "/blob/" in self.path else MAX_BODY
        if n > limit:
            self.close_connection = True
            raise WireError(f"request body of {n} bytes is too large (at most {limit})")
        body = self.rfile.read(n) if n else b""
        if len(body) != n:  # the sender died mid-request: never act on a part of it
            raise ConnectionError(f"request body cut at {len(body)} of {n} bytes")
        return body

    def _dispatch(self, method: str) -> None:
        try:
            body = self._body()
        except WireError as exc:
            self._send(400, json.dumps({"error": str(exc), "kind": "WireError"}).encode())
            return
        except (OSError, ValueError):
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        try:
            agent = self.server.tokens.check(self.headers.get("Authorization"))
            for m, rx, fn in self.server.routes:
                match = rx.fullmatch(parts.path)
                if m == method and match:
                    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                    args = {k: unquote(v) for k, v in match.groupdict().items()}
                    out = fn(self, agent, body, q, **args)
                    break
            else:
                raise UnknownError(f"no such API: {method} {parts.path}")
        except Exception as exc:
            status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
            if status == 500:
                log.exception("gateway: %s %s", method, parts.path)
            doc: dict[str, Any] = {"error": str(exc), "kind": type(exc).__name__}
            if isinstance(exc, LeaseHeld):
                doc["holder"] = exc.holder
            msg = json.dumps(doc).encode()
            self._send(status, msg)
            return
        if isinstance(out, bytes | bytearray):
            self._send(200, bytes(out), "application/octet-stream")
        else:
            self._send(200, json.dumps(out).encode())

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


def _lease(h: _Handler) -> str:
    lease = h.headers.get("X-OpenBDR-Lease")
    if not lease:
        raise WireError("no X-OpenBDR-Lease header on a sync request")
    return lease


def _json(body: bytes) -> dict[str, Any]:
    try:
        out = json.loads(body or b"{}")
    except ValueError:
        raise WireError("request body is not JSON") from None
    if not isinstance(out, dict):
        raise WireError("request body is not a JSON object")
    return out


def _all_hosts(agent: Agent) -> None:
    if "*" not in agent.hosts:
        raise Forbidden(f"agent {agent.name} may not run site-wide operations")


def _routes(site: Site) -> list[Route]:
    H = r"(?P<host>[A-Za-z0-9][A-Za-z0-9._-]{0,127})"
    P = r"(?P<point>[^/]+)"  # unknown ids are the site's to name
    D = r"(?P<disk>\d+)"

    def info(h: _Handler, a: Agent, b: bytes, q: dict[str, str]) -> Any:
        return {**site.info(), "agent": a.name}

    def hosts(h: _Handler, a: Agent, b: bytes, q: dict[str, str]) -> Any:
        return [x for x in site.hosts() if "*" in a.hosts or x in a.hosts]

    def points(h: _Handler, a: Agent, b: bytes, q: dict[str, str]) -> Any:
        host = q.get("host")
        if host:
            a.check_host(host)
        else:
            _all_hosts(a)
        return [json.loads(p.to_bytes()) for p in site.points(host)]

    def point(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str, point: str) -> Any:
        a.check_host(host)
        return json.loads(site.point(host, point).to_bytes())

    def update(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str, point: str) -> Any:
        a.check_host(host)
        p = RestorePoint.from_bytes(b)
        if p.host != host or p.id != point:
            raise WireError("the body names another point")
        site.update_point(p)
        return {}

    def forget(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str) -> Any:
        a.check_host(host)
        site.forget(host, list(_json(b).get("points", [])))
        return {}

    def index(h: _Handler, a: Agent, b: bytes, q: dict[str, str], **kw: str) -> Any:
        a.check_host(kw["host"])
        return site.index(kw["host"], kw["point"], int(kw["disk"]))

    def read(h: _Handler, a: Agent, b: bytes, q: dict[str, str], **kw: str) -> Any:
        a.check_host(kw["host"])
        return site.read(kw["host"], kw["point"], int(kw["disk"]), int(kw["block"]))

    def direct(h: _Handler, a: Agent, b: bytes, q: dict[str, str], **kw: str) -> Any:
        a.check_host(kw["host"])
        return {"source": site.direct(kw["host"], kw["point"], int(kw["disk"]))}

    def begin(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str) -> Any:
        a.check_host(host)
        d = _json(b)
        return site.begin(host, _lease(h), d.get("parent"), d.get("owner"), d.get("takeover"))

    def end(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str) -> Any:
        a.check_host(host)
        site.release(host, _lease(h))
        return {}

    def renew(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str) -> Any:
        a.check_host(host)
        site.lease(host, _lease(h))
        return {}

    def disk(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str) -> Any:
        a.check_host(host)
        d = _json(b)
        try:
            no, name, size = int(d["no"]), str(d["name"]), int(d["size"])
        except (KeyError, TypeError, ValueError):
            raise WireError("a disk needs no, name and size") from None
        return site.open_disk(host, _lease(h), no, name, size, bool(d.get("resume", True)))

    def blocks(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str) -> Any:
        a.check_host(host)
        return {"written": site.put_blocks(host, _lease(h), b)}

    def put_blob(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str, name: str) -> Any:
        a.check_host(host)
        site.put_session_blob(host, _lease(h), name, b)
        return {}

    def get_blob(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str, name: str) -> Any:
        a.check_host(host)
        return site.get_session_blob(host, name)

    def checkpoint(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str) -> Any:
        a.check_host(host)
        site.checkpoint(host, _lease(h), _json(b).get("state") or {})
        return {}

    def missing(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str) -> Any:
        a.check_host(host)
        return {str(k): v for k, v in site.missing(host, _lease(h)).items()}

    def commit(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str) -> Any:
        a.check_host(host)
        p = site.commit(host, _lease(h), RestorePoint.from_bytes(b))
        return json.loads(p.to_bytes())

    def verify(h: _Handler, a: Agent, b: bytes, q: dict[str, str]) -> Any:
        d = _json(b)
        host = d.get("host")
        if host:
            a.check_host(host)
        else:
            _all_hosts(a)
        rep = site.verify(host, bool(d.get("deep")), float(d.get("sample", 100.0)))
        return {
            "points": rep.points,
            "chunks_referenced": rep.chunks_referenced,
            "chunks_checked": rep.chunks_checked,
            "problems": [p.__dict__ for p in rep.problems],
        }

    def gc(h: _Handler, a: Agent, b: bytes, q: dict[str, str]) -> Any:
        _all_hosts(a)
        return site.gc(bool(_json(b).get("dry_run"))).__dict__

    def protect(h: _Handler, a: Agent, b: bytes, q: dict[str, str], host: str, point: str) -> Any:
        a.check_host(host)
        return json.loads(site.protect(host, point, bool(_json(b).get("on", True))).to_bytes())

    def vols(h: _Handler, a: Agent, b: bytes, q: dict[str, str]) -> Any:
        _all_hosts(a)
        return list(site.volumes_report())

    def meta_list(h: _Handler, a: Agent, b: bytes, q: dict[str, str]) -> Any:
        _all_hosts(a)  # drill reports of every host: site-wide credentials only
        return [i.__dict__ for i in site.meta.list(q.get("prefix", ""))]

    def meta_get(h: _Handler, a: Agent, b: bytes, q: dict[str, str], key: str) -> Any:
        _all_hosts(a)  # drill reports of every host: site-wide credentials only
        return site.meta.get(key)

    def meta_put(h: _Handler, a: Agent, b: bytes, q: dict[str, str], key: str) -> Any:
        _all_hosts(a)  # drill reports of every host: site-wide credentials only
        site.meta.put(key, b)
        site.meta.flush()
        return {}

    def meta_delete(h: _Handler, a: Agent, b: bytes, q: dict[str, str], key: str) -> Any:
        _all_hosts(a)  # drill reports of every host: site-wide credentials only
        site.meta.delete(key)
        return {}

    def meta_cas(h: _Handler, a: Agent, b: bytes, q: dict[str, str], key: str) -> Any:
        _all_hosts(a)  # drill reports of every host: site-wide credentials only
        d = _json(b)
        data = base64.b64decode(d["data"])
        if d.get("expected") is None:
            ok = site.meta.put_if_absent(key, data)
        else:
            ok = site.meta.replace_if(key, base64.b64decode(d["expected"]), data)
        site.meta.flush()
        return {"ok": ok}

    K = r"(?P<key>[A-Za-z0-9._/-]+)"
    S = f"{API}/sync/{H}"
    table: list[tuple[str, str, Callable[..., Any]]] = [
        ("GET", f"{API}/info", info),
        ("GET", f"{API}/hosts", hosts),
        ("GET", f"{API}/points", points),
        ("GET", f"{API}/points/{H}/{P}", point),
        ("PUT", f"{API}/points/{H}/{P}", update),
        ("POST", f"{API}/forget/{H}", forget),
        ("POST", f"{API}/protect/{H}/{P}", protect),
        ("GET", f"{API}/index/{H}/{P}/{D}", index),
        ("GET", f"{API}/read/{H}/{P}/{D}/(?P<block>\\d+)", read),
        ("GET", f"{API}/direct/{H}/{P}/{D}", direct),
        ("POST", f"{S}/begin", begin),
        ("POST", f"{S}/end", end),
        ("POST", f"{S}/renew", renew),
        ("POST", f"{S}/disk", disk),
        ("PUT", f"{S}/blocks", blocks),
        ("PUT", f"{S}/blob/(?P<name>[A-Za-z0-9._-]+)", put_blob),
        ("GET", f"{S}/blob/(?P<name>[A-Za-z0-9._-]+)", get_blob),
        ("POST", f"{S}/checkpoint", checkpoint),
        ("POST", f"{S}/missing", missing),
        ("POST", f"{S}/commit", commit),
        ("POST", f"{API}/verify", verify),
        ("POST", f"{API}/gc", gc),
        ("GET", f"{API}/volumes", vols),
        ("GET", f"{API}/meta", meta_list),
        ("GET", f"{API}/meta/{K}", meta_get),
        ("PUT", f"{API}/meta/{K}", meta_put),
        ("DELETE", f"{API}/meta/{K}", meta_delete),
        ("POST", f"{API}/meta-cas/{K}", meta_cas),
    ]
    return [(m, re.compile(p), fn) for m, p, fn in table]


class GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        site: Site,
        tokens: Tokens,
        listen: tuple[str, int],
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(listen, _Handler)
        self.site = site
        self.tokens = tokens
        self.routes = _routes(site)
        if tls is not None:  # the handshake runs in the connection's thread, not in accept
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def make_server(
    root: str | Path,
    volumes: str,
    listen: tuple[str, int] = ("127.0.0.1", 0),
    cert: str | None = None,
    key: str | None = None,
    tls: bool = True,
) -> GatewayServer:
    root = Path(root)
    site = Site(root, volumes)
    ctx = None
    if tls:
        if not cert:
            c, k = self_signed(root / "tls", [listen[0]] if listen[0] else None)
            cert, key = str(c), str(k)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
    return GatewayServer(site, Tokens(root / "tokens.json"), listen, ctx)


def serve_in_thread(server: GatewayServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, name="gateway", daemon=True)
    t.start()
    return t
