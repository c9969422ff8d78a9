"""Commands in a drill guest through the QEMU guest agent (when the image has one)."""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from pathlib import Path

from ..errors import OpenBDRError


class GuestAgentError(OpenBDRError):
    """The guest agent did not answer or refused a command."""


class _Chan:
    def __init__(self, path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise GuestAgentError("the guest agent closed its channel")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def _send(self, cmd: str, **args: object) -> None:
        msg: dict[str, object] = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")

    def call(self, cmd: str, **args: object) -> object:
        self._send(cmd, **args)
        while True:
            line = self._line().strip()
            if not line:
                continue
            reply = json.loads(line)
            if "error" in reply:
                raise GuestAgentError(f"guest agent {cmd}: {reply['error'].get('desc')}")
            if "return" in reply:
                return reply["return"]

    def sync(self) -> None:
        """Reset the agent's parser (0xFF) and skip stale replies up to our sentinel reply."""
        token = random.randrange(1, 1 << 31)
        self.sock.sendall(b"\xff")
        self._send("guest-sync-delimited", id=token)
        while True:
            line = self._line()
            if b"\xff" not in line:
                continue  # the parse error our 0xFF caused, or a stale reply
            reply = json.loads(line.rsplit(b"\xff", 1)[1])
            if reply.get("return") == token:
                return

    def close(self) -> None:
        self.sock.close()


def guest_exec(path: Path, argv: list[str], timeout: float = 30.0) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `argv` run in the guest."""
    chan = _Chan(path, timeout=min(5.0, timeout))
    try:
        chan.sync()
        started = chan.call("guest-exec", path=argv[0], arg=argv[1:], **{"capture-output": True})
        pid = started["pid"]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while True:
            st = chan.call("guest-exec-status", pid=pid)
            if not isinstance(st, dict):
                raise GuestAgentError(f"guest-exec-status answered {st!r}")
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                return int(st.get("exitcode", -1)), out, err
            if time.monotonic() > deadline:
                raise GuestAgentError(f"guest command {argv[0]} did not finish in {timeout:g} s")
            time.sleep(0.2)
    except (OSError, ValueError) as exc:
        raise GuestAgentError(f"guest agent at {path}: {exc}") from None
    finally:
        chan.close()
