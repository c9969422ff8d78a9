"""A minimal synchronous QMP client (QEMU Machine Protocol) over a unix socket."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from ..errors import OpenBDRError


class QmpError(OpenBDRError):
    """QEMU's monitor refused a command or is unreachable."""


class Qmp:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)
                break
            except OSError as exc:
                self.sock.close()
                last = exc
                if time.monotonic() > deadline:
                    raise QmpError(f"cannot reach QEMU's monitor at {path}: {last}") from None
                time.sleep(0.1)
        self._buf = b""
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QmpError("QEMU closed its monitor")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return dict(json.loads(line))

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                raise QmpError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def close(self) -> None:
        self.sock.close()
