"""The HTTP service: one port for the EC2 Query API (POST /) and the EBS direct APIs
(/snapshots/…), with per-request latency, throttling at a configurable rate, and SigV4
checked against the fake's known keys. boto3 talks to it unmodified through
`endpoint_url`.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .ebs import EbsApi, EbsError, Reply
from .ec2 import Ec2Api, Ec2Error, error_xml
from .state import Account

ACCESS_KEY = "AKIAFAKEOPENBDR00001"
SECRET_KEY = "fake-secret-key-of-the-openbdr-tests"

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[^,]+), ?Signature=(?P<sig>[0-9a-f]+)"
)


class FakeAWS:
    """An EC2 + EBS region on loopback. Configure it through its attributes:

    latency (s per request), throttle_rate (share of EBS requests answered with
    RequestThrottledException), ec2_throttle_rate (RequestLimitExceeded), error_rate
    (InternalServerException 500), concurrent_limit (EBS requests in flight before
    ConcurrentLimitExceededException), account.completion_delay (pending → completed),
    ebs.scan_window / page_token_ttl / block_token_ttl, ebs.corrupt, ebs.denied,
    keys (access key → secret), verify_signatures. `hooks` are called with
    (operation, query) before each request is served (tests move the clock there)."""

    def __init__(self, workdir: Path, region: str = "us-east-1", seed: int = 7) -> None:
        self.account = Account(workdir, region)
        self.ec2 = Ec2Api(self.account)
        self.ebs = EbsApi(self.account)
        self.latency = 0.0
        self.throttle_rate = 0.0
        self.ec2_throttle_rate = 0.0
        self.error_rate = 0.0
        self.concurrent_limit = 0
        self.keys: dict[str, str] = {ACCESS_KEY: SECRET_KEY}
        self.verify_signatures = True
        self.hooks: list[Any] = []
        #: role ARN -> IAM actions its temporary keys may not use (STS AssumeRole)
        self.roles: dict[str, set[str]] = {}
        #: access keys that called since start (tests check the role's keys were used)
        self.callers: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self, port: int = 0) -> FakeAWS:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        httpd = _Server(("127.0.0.1", port), Handler)
        httpd.daemon_threads = True
        httpd.request_queue_size = 256
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="fake-aws", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeAWS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def assume_role(self, params: dict[str, str]) -> bytes:
        """STS AssumeRole: temporary keys that carry the role's denied actions."""
        import secrets
        from datetime import UTC, datetime, timedelta

        arn = params.get("RoleArn", "")
        key = "ASIA" + secrets.token_hex(8).upper()
        secret = secrets.token_hex(20)
        self.keys[key] = secret
        self.ebs.denied[key] = set(self.roles.get(arn, set()))
        exp = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            f"<AssumeRoleResult><Credentials><AccessKeyId>{key}</AccessKeyId>"
            f"<SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{secrets.token_hex(32)}"
            f"</SessionToken><Expiration>{exp}</Expiration></Credentials><AssumedRoleUser>"
            f"<Arn>{arn}/{params.get('RoleSessionName', '')}</Arn><AssumedRoleId>AROAFAKE:x"
            "</AssumedRoleId></AssumedRoleUser></AssumeRoleResult><ResponseMetadata>"
            "<RequestId>fake</RequestId></ResponseMetadata></AssumeRoleResponse>"
        ).encode()

    def credentials(self) -> dict[str, str]:
        return {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}

    def _roll(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._rng_lock:
            return self._rng.random() < rate


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer (a cancelled read-ahead) is no error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeAWS

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", "fake-" + str(time.monotonic_ns()))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _access_key(self, body: bytes, service: str) -> str | None:
        """The caller's access key, or None when the signature does not hold."""
        fake = self.server_fake
        m = _AUTH.match(self.headers.get("Authorization", ""))
        if m is None:
            return None
        key = m.group("key")
        secret = fake.keys.get(key)
        if secret is None:
            return None
        if not fake.verify_signatures:
            return key
        return key if _signature_ok(self, body, m, key, secret) else None

    def do_POST(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.server_fake
        body = self._body()
        if fake.latency > 0:
            time.sleep(fake.latency)
        parts = urlsplit(self.path)
        if parts.path.startswith("/snapshots"):
            self._ebs(parts.path, dict(parse_qsl(parts.query)), body)
        else:
            self._ec2(body)

    # -- EC2 -----------------------------------------------------------------------------------
    def _ec2(self, body: bytes) -> None:
        fake = self.server_fake
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        action = params.get("Action", "?")
        fake.calls["ec2:" + action] += 1
        xml = {"Content-Type": "text/xml;charset=UTF-8"}
        akey = self._access_key(body, "ec2")
        if akey is not None:
            fake.callers[akey] += 1
        if akey is None:
            self._send(
                401,
                error_xml(
                    "AuthFailure", "AWS was not able to validate the provided access credentials"
                ),
                xml,
            )
            return
        for hook in list(fake.hooks):
            hook("ec2:" + action, params)
        if action == "AssumeRole":
            self._send(200, fake.assume_role(params), xml)
            return
        if f"ec2:{action}" in fake.ebs.denied.get(akey, set()):
            msg = f"You are not authorized to perform this operation. (ec2:{action})"
            self._send(403, error_xml("UnauthorizedOperation", msg), xml)
            return
        if fake._roll(fake.ec2_throttle_rate):
            fake.throttled["ec2:" + action] += 1
            self._send(503, error_xml("RequestLimitExceeded", "Request limit exceeded."), xml)
            return
        try:
            self._send(200, fake.ec2.handle(params), xml)
        except Ec2Error as exc:
            self._send(exc.status, error_xml(exc.code, exc.message), xml)

    # -- EBS -----------------------------------------------------------------------------------
    def _ebs(self, path: str, query: dict[str, str], body: bytes) -> None:
        fake = self.server_fake
        segs = [unquote(s) for s in path.split("/") if s]
        op, args = _route(self.command, segs)
        fake.calls["ebs:" + op] += 1
        akey = self._access_key(body, "ebs")
        try:
            if akey is None:
                raise EbsError(
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                    403,
                )
            for hook in list(fake.hooks):
                hook("ebs:" + op, {**query, **args})
            if fake._roll(fake.throttle_rate):
                fake.throttled["ebs:" + op] += 1
                raise EbsError(
                    "RequestThrottledException", "Request throttled.", 400, "ACCOUNT_THROTTLED"
                )
            if fake._roll(fake.error_rate):
                raise EbsError("InternalServerException", "An internal error has occurred.", 500)
            with fake._rng_lock:
                fake._in_flight += 1
                over = fake.concurrent_limit and fake._in_flight > fake.concurrent_limit
            try:
                if over:
                    raise EbsError(
                        "ConcurrentLimitExceededException",
                        "You have reached the limit for concurrent API requests.",
                        400,
                    )
                reply = self._ebs_op(op, args, query, body, akey)
            finally:
                with fake._rng_lock:
                    fake._in_flight -= 1
        except EbsError as exc:
            if exc.reason:
                with fake._rng_lock:
                    fake.ebs.refused[exc.reason] = fake.ebs.refused.get(exc.reason, 0) + 1
            self._send(
                exc.status,
                exc.body(),
                {"Content-Type": "application/json", "x-amzn-ErrorType": exc.code},
            )
            return
        self._send(reply.status, reply.body, reply.headers)

    def _ebs_op(
        self, op: str, args: dict[str, str], query: dict[str, str], body: bytes, akey: str
    ) -> Reply:
        ebs = self.server_fake.ebs
        if op == "ListSnapshotBlocks":
            return ebs.list_snapshot_blocks(args["snapshot"], query, akey)
        if op == "ListChangedBlocks":
            return ebs.list_changed_blocks(args["snapshot"], query, akey)
        if op == "GetSnapshotBlock":
            return ebs.get_snapshot_block(args["snapshot"], int(args["index"]), query, akey)
        if op == "StartSnapshot":
            return ebs.start_snapshot(json.loads(body or b"{}"), akey)
        hdrs = {k.lower(): v for k, v in self.headers.items()}
        if op == "PutSnapshotBlock":
            return ebs.put_snapshot_block(args["snapshot"], int(args["index"]), hdrs, body)
        if op == "CompleteSnapshot":
            return ebs.complete_snapshot(args["snapshot"], hdrs)
        raise EbsError(
            "ValidationException",
            f"Unknown operation {self.command} {self.path}",
            400,
            "INVALID_PARAMETER_VALUE",
        )


def _route(method: str, segs: list[str]) -> tuple[str, dict[str, str]]:
    if method == "POST" and segs == ["snapshots"]:
        return "StartSnapshot", {}
    if method == "POST" and len(segs) == 3 and segs[1] == "completion":
        return "CompleteSnapshot", {"snapshot": segs[2]}
    if len(segs) == 3 and segs[2] == "blocks":
        return "ListSnapshotBlocks", {"snapshot": segs[1]}
    if len(segs) == 3 and segs[2] == "changedblocks":
        return "ListChangedBlocks", {"snapshot": segs[1]}
    if len(segs) == 4 and segs[2] == "blocks" and segs[3].isdigit():
        op = "PutSnapshotBlock" if method == "PUT" else "GetSnapshotBlock"
        return op, {"snapshot": segs[1], "index": segs[3]}
    return "Unknown", {}


def _signature_ok(h: _Handler, body: bytes, m: re.Match[str], key: str, secret: str) -> bool:
    """Recompute the SigV4 signature with botocore's signer over the signed headers."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signed = m.group("signed").split(";")
    headers = {k: v for k, v in h.headers.items() if k.lower() in signed}
    host = h.headers.get("Host", "")
    req = AWSRequest(method=h.command, url=f"http://{host}{h.path}", data=body, headers=headers)
    amz_date = h.headers.get("X-Amz-Date", "")
    req.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(key, secret), m.group("service"), m.group("region"))
    try:
        canonical = auth.canonical_request(req)
        sts = auth.string_to_sign(req, canonical)
        return auth.signature(sts, req) == m.group("sig")
    except Exception:
        return False
