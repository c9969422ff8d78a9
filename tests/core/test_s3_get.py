"""The S3 store's GET (signed by botocore, sent by urllib3) on the real gateway: the
same answers as the SDK's GET gave, and every refusal one clear line."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.session import Session

from openbdr.errors import AuthError, CorruptionError, ExitCode, RepositoryError
from openbdr.store.blobs import NotFound, open_blobs
from openbdr.store.objects.layout import chunk_key
from openbdr.store.objects.target import ObjectPointReader
from openbdr.store.retry import RetryingBlobs
from openbdr.store.s3 import S3Blobs
from openbdr.store.target import open_target

from ..helpers import openbdr

pytestmark = pytest.mark.s3


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("openbdr: error: "), err
    return err


def test_missing_chunk_is_the_same_error_as_in_a_directory(
    tmp_path: Path, ceph: dict[str, str]
) -> None:
    """One chunk deleted from the same point in a directory and in a bucket: a restore
    stops on the same block with the same words and exit code."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(5 << 20))
    directory, bucket = str(tmp_path / "repo"), f"t-{uuid.uuid4().hex[:12]}"
    url = f"s3://{bucket}/repo"
    errors: list[str] = []
    for repo in (directory, url):
        openbdr("repo", "init", repo)
        openbdr("sync", "-r", repo, "-H", "h", "--all-data", str(image))
    for repo in (directory, url):  # block 2's chunk (each repository keys its own ids)
        target = open_target(repo)
        point = target.latest("h")
        assert point is not None
        reader = target.reader(point, point.disks[0])
        assert isinstance(reader, ObjectPointReader)
        cid = reader.index[2]
        target.close()
        if repo == directory:
            (Path(directory) / chunk_key(cid)).unlink()
        else:
            boto3.client("s3").delete_object(Bucket=bucket, Key=f"repo/{chunk_key(cid)}")
        out = tmp_path / f"restored-{len(errors)}.img"
        proc = openbdr("restore", "-r", repo, "-H", "h", "--to", str(out), check=False)
        assert proc.returncode == ExitCode.DAMAGED
        line = _one_line(proc)
        assert f"block 2 (offset {2 << 20}): chunk {cid.hex()} is missing" in line
        assert not out.exists()
        errors.append(line.replace(str(out), "OUT").replace(cid.hex(), "ID").replace(point.id, "P"))
    assert errors[0] == errors[1]


def test_wrong_credential_on_get_is_one_clear_line(
    tmp_path: Path, ceph: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials that botocore refreshes (a profile's `credential_process`) go wrong
    after the store opened: the next GET is refused with one line, not retried for
    minutes; right again, the next GET is signed with them and succeeds."""
    secret = tmp_path / "secret"
    secret.write_text(ceph["AWS_SECRET_ACCESS_KEY"])
    helper = tmp_path / "creds.py"
    helper.write_text(
        "import json, datetime, pathlib\n"
        "soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)\n"
        f"print(json.dumps({{'Version': 1, 'AccessKeyId': {ceph['AWS_ACCESS_KEY_ID']!r},\n"
        f"    'SecretAccessKey': pathlib.Path({str(secret)!r}).read_text(),\n"
        "    'Expiration': soon.isoformat()}))\n"
    )
    config = tmp_path / "aws-config"
    config.write_text(f"[profile rotating]\ncredential_process = {sys.executable} {helper}\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "rotating")
    monkeypatch.setenv("OPENBDR_S3_RETRY_DEADLINE", "60")  # a retried refusal would show

    # a session of its own: the process's one has resolved (and keeps) the env's keys
    store = RetryingBlobs(
        S3Blobs(f"s3://t-{uuid.uuid4().hex[:12]}/p", create=True, session=Session())
    )
    try:
        store.put("chunks/ab/cd", b"chunk")
        assert store.get("chunks/ab/cd") == b"chunk"
        secret.write_text("not-the-secret")  # expires within botocore's refresh window
        with pytest.raises(AuthError) as exc:
            store.get("chunks/ab/cd")
        line = str(exc.value)
        assert len(line.splitlines()) == 1
        assert "S3 denied reading chunks/ab/cd" in line and "SignatureDoesNotMatch" in line
        assert "AWS_ACCESS_KEY_ID" in line
        secret.write_text(ceph["AWS_SECRET_ACCESS_KEY"])
        assert store.get("chunks/ab/cd") == b"chunk"
        with pytest.raises(NotFound):
            store.get("chunks/ab/missing")
    finally:
        store.close()


def test_credential_that_may_list_but_not_read(tmp_path: Path, ceph: dict[str, str]) -> None:
    """A user the bucket's policy lets list but not read: the CLI says so in one line
    with the credentials' exit code (the SDK's GET gave an internal error here)."""
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    url = f"s3://{bucket}/repo"
    openbdr("repo", "init", url)
    uid, access, secret = f"r{uuid.uuid4().hex[:8]}", f"R{uuid.uuid4().hex[:19].upper()}", "s"
    subprocess.run(
        ["radosgw-admin", "user", "create", f"--uid={uid}", f"--display-name={uid}",
         f"--access-key={access}", f"--secret={secret}"],
        check=True, capture_output=True,
    )
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": [f"arn:aws:iam:::user/{uid}"]},
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
        }],
    }
    boto3.client("s3").put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)
    proc = openbdr("points", "-r", url, check=False, env=env)
    assert proc.returncode == ExitCode.AUTH
    line = _one_line(proc)
    assert f"S3 denied reading config at {url}" in line and "AccessDenied" in line


def test_bucket_gone_after_open(ceph: dict[str, str]) -> None:
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    store = open_blobs(f"s3://{bucket}/p", create=True)
    try:
        store.put("x", b"1")
        s3 = boto3.client("s3")
        s3.delete_object(Bucket=bucket, Key="p/x")
        s3.delete_bucket(Bucket=bucket)
        with pytest.raises(RepositoryError, match=f"S3 bucket '{bucket}' does not exist"):
            store.get("x")
    finally:
        store.close()


def test_keys_that_need_quoting(ceph: dict[str, str]) -> None:
    """The GET signs the key as S3 encodes it: spaces, `+`, `~`, non-ASCII."""
    store = open_blobs(f"s3://t-{uuid.uuid4().hex[:12]}/a b", create=True)
    try:
        for key in ("x y/z", "plus+tilde~", "ü/€", "a%2Fb"):
            store.put(key, key.encode())
            assert store.get(key) == key.encode()
        assert store.replace_if("x y/z", b"x y/z", b"new") and store.get("x y/z") == b"new"
    finally:
        store.close()


class _ForwardProxy(http.server.BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy (absolute-form requests) that notes what it forwards."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str]]] = []
    asked: ClassVar[list[dict[str, str]]] = []  # the headers of every GET
    answer_with: ClassVar[dict[str, str]] = {}  # headers added to every GET's answer

    def _forward(self) -> None:
        url = urlsplit(self.path)
        self.seen.append((self.command, self.path))
        if self.command == "GET":
            self.asked.append({k.lower(): v for k, v in self.headers.items()})
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        up = http.client.HTTPConnection(url.hostname or "", url.port)
        target = url.path + (f"?{url.query}" if url.query else "")
        up.request(self.command, target, body=body or None, headers=dict(self.headers.items()))
        answer = up.getresponse()
        data = answer.read()
        self.send_response(answer.status, answer.reason)
        for k, v in answer.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        for k, v in (self.answer_with if self.command == "GET" else {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        up.close()

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`HTTP_PROXY` set to a forward proxy, for the SDK and the store's GET."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for var in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    _ForwardProxy.seen.clear()
    _ForwardProxy.asked.clear()
    _ForwardProxy.answer_with.clear()
    try:
        yield
    finally:
        server.shutdown()


def test_get_goes_through_the_environments_proxy(
    ceph: dict[str, str], monkeypatch: pytest.MonkeyPatch, proxy: None
) -> None:
    """`HTTP_PROXY` is honoured by the GET as by botocore, and `NO_PROXY` too."""
    url = f"s3://t-{uuid.uuid4().hex[:12]}/p"
    store = open_blobs(url, create=True)
    store.put("k 1", b"via the proxy")
    assert store.get("k 1") == b"via the proxy"
    store.close()
    gets = [path for method, path in _ForwardProxy.seen if method == "GET"]
    assert gets == [f"{ceph['AWS_ENDPOINT_URL_S3']}/{url[5:]}/k%201"]
    _ForwardProxy.seen.clear()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    store = open_blobs(url)
    assert store.get("k 1") == b"via the proxy"
    store.close()
    assert _ForwardProxy.seen == []


def test_get_checks_the_checksum_s3_keeps(
    ceph: dict[str, str], monkeypatch: pytest.MonkeyPatch, proxy: None
) -> None:
    """With botocore's default `response_checksum_validation = when_supported` the GET
    asks for S3's checksum of the object and checks it as botocore does: a mismatch is
    damage, a multipart upload's composite checksum is not the object's and is skipped.
    (Ceph 16 keeps none: the proxy adds them to its answers.)"""
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_supported")
    store = open_blobs(f"s3://t-{uuid.uuid4().hex[:12]}/p", create=True)
    try:
        store.put("k", b"payload")
        crc = base64.b64encode(zlib.crc32(b"payload").to_bytes(4, "big")).decode()
        _ForwardProxy.answer_with["x-amz-checksum-crc32"] = crc
        assert store.get("k") == b"payload"
        assert _ForwardProxy.asked[-1].get("x-amz-checksum-mode") == "ENABLED"
        _ForwardProxy.answer_with["x-amz-checksum-crc32"] = "AAAAAA=="
        with pytest.raises(CorruptionError, match=r"k arrived damaged \(its crc32"):
            store.get("k")
        _ForwardProxy.answer_with["x-amz-checksum-crc32"] = "AAAAAA==-3"
        assert store.get("k") == b"payload"
        sha = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
        _ForwardProxy.answer_with.clear()
        _ForwardProxy.answer_with["x-amz-checksum-sha256"] = sha
        with pytest.raises(CorruptionError, match="sha256"):
            store.get("k")
    finally:
        store.close()
