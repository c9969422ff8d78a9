"""A fault-injecting TCP proxy for HTTP (S3) traffic, written for the tests.

At the start of each HTTP request (a client segment that begins with a method) it draws
a fault with probability `rate`: drop the connection, delay, answer 503 SlowDown, or
forward the request and cut the connection before the answer. The upstream address is
asked for on every connection, so a gateway restarted on a new port stays reachable at
the proxy's stable port.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")
_BODY = b'<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>injected</Message></Error>'
SLOWDOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


@dataclass
class FaultProxy:
    upstream: Callable[[], tuple[str, int]]
    rate: float = 0.0
    seed: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _draw(self) -> str | None:
        with self._lock:
            self.counts["requests"] = self.counts.get("requests", 0) + 1
            if self._rng.random() >= self.rate:
                return None
            fault = self._rng.choice(["drop", "delay", "error", "cut"])
            self.counts[fault] = self.counts.get(fault, 0) + 1
            return fault

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream(), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self._conns.update((client, upstream))
        cut = threading.Event()

        def back() -> None:
            try:
                while data := upstream.recv(65536):
                    if cut.is_set():
                        break
                    client.sendall(data)
            except OSError:
                pass
            self._close(client, upstream)

        threading.Thread(target=back, daemon=True).start()
        try:
            while data := client.recv(65536):
                fault = self._draw() if data.startswith(METHODS) else None
                if fault == "drop":
                    break
                if fault == "error":
                    client.sendall(SLOWDOWN)
                    break
                if fault == "delay":
                    time.sleep(self._rng.uniform(0.2, 1.5))
                if fault == "cut":
                    cut.set()
                upstream.sendall(data)
                if fault == "cut":
                    time.sleep(0.05)
                    break
        except OSError:
            pass
        self._close(client, upstream)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            self._conns.discard(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._close(*list(self._conns))
