"""Receivers for notification tests: an HTTP webhook receiver that can be down or failing,
and an SMTP server with STARTTLS (a self-signed certificate made here) and log-in."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import hmac
import ipaddress
import json
import threading
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import free_port


class Receiver:
    """Records every POST (headers, body); answers `status`. `stop()` makes it refuse
    connections; `start()` brings it back on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.hits: list[tuple[dict[str, str], bytes, str, int]] = []
        self._srv: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.hits.append(({k.lower(): v for k, v in self.headers.items()}, body,
                                   self.path, owner.status))
                self.send_response(owner.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    def accepted(self, path: str = "/") -> list[tuple[dict[str, str], dict[str, Any]]]:
        """(headers, JSON body) of the POSTs to `path` answered 2xx."""
        return [(h, json.loads(b)) for h, b, p, st in self.hits if p == path and st < 300]


def valid_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, written from docs/notifications.md (not the server's code)."""
    ts = headers["x-openbdr-timestamp"]
    want = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body,
                                hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, headers.get("x-openbdr-signature", ""))


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "smtp.crt", tmp / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Mailbox:
    """An SMTP server (aiosmtpd) that requires STARTTLS and a log-in (`user`/`pass`)."""

    USER, PASSWORD = "alerts", "smtp-secret"

    def __init__(self, tmp: Path) -> None:
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.cert, key = self_signed(tmp)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)
        self.messages: list[EmailMessage] = []
        self.logins: list[str] = []
        box = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                assert session.ssl is not None, "mail sent without STARTTLS"
                box.messages.append(email.message_from_bytes(
                    envelope.original_content, policy=email.policy.default))  # type: ignore[arg-type]
                return "250 OK"

        def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            ok = (isinstance(data, LoginPassword) and data.login.decode() == box.USER
                  and data.password.decode() == box.PASSWORD)
            if ok:
                box.logins.append(data.login.decode())
            return AuthResult(success=ok)

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     tls_context=ctx, require_starttls=True,
                                     authenticator=auth, auth_required=True)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def parts(self, msg: EmailMessage) -> tuple[str, str]:
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        assert text is not None and html is not None, "a plain-text and an HTML part"
        return text.get_content(), html.get_content()
