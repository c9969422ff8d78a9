"""TLS when given a certificate: the CLI and agents verify it with OPENBDR_CA; the
server's logs are JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ..helpers import openbdr
from .conftest import ServerProc


def test_tls_server_and_json_logs(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    srv = ServerProc(tmp_path / "data", f"sqlite:///{tmp_path / 'c.db'}",
                     ["--cert", str(cert), "--key", str(key), "--workers", "1"])
    srv.url = srv.url.replace("http://", "https://")
    srv.verify = str(cert)
    srv.start()
    try:
        env = {**os.environ, "OPENBDR_SERVER": srv.url, "OPENBDR_TOKEN": srv.token,
               "OPENBDR_CA": str(cert)}
        assert "name" in openbdr("host", "list", env=env).stdout
        env.pop("OPENBDR_CA")
        bad = openbdr("host", "list", env=env, check=False)
        assert bad.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in bad.stderr
    finally:
        srv.stop()
    lines = [ln for ln in srv.log.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]
    assert any("ready" in r["msg"] for r in records)
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
