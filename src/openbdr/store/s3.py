"""`Blobs` on S3 (AWS, Ceph RGW, MinIO, …) through boto3.

The endpoint and credentials come from the standard AWS settings (`AWS_ENDPOINT_URL_S3`
or `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, …); `S3_ENDPOINT_URL` is honoured
too. S3 puts are atomic and durable on success, so `flush()` has nothing to do.

GETs (every chunk a restore, verify or drill reads) take a leaner path than boto3's
request pipeline, which costs 1.2–1.8 ms of CPU per request on top of the transfer: the
bucket's URL and signing region are the ones botocore resolved for the `HeadBucket` that
opens the store (its `before-sign` event), each GET is signed with botocore's SigV4
(`S3SigV4Auth`, the client's own credentials, refreshed as botocore refreshes them) and
sent through a urllib3 pool with the client's timeouts, CA bundle and proxy settings.
Its failures are answered as the SDK's were: transient ones as `ClientError`s or urllib3
errors that `RetryingBlobs` retries, the rest as one clear `OpenBDRError`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import urllib.request
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlparse

import boto3
import botocore.exceptions
import botocore.session
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from ..chunk import crc32
from ..errors import AuthError, CorruptionError, OpenBDRError, RepositoryError, UnreachableError
from .blobs import BlobInfo, Blobs, LockedObject, NotFound
from .retry import deadline_seconds, is_transient, with_retries

_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


#: refusals that mean "this credential may not": the same for the bucket and its objects
_DENIED = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "UserSuspended"}
)
_NO_BUCKET = frozenset({"NoSuchBucket"})


def _crc32(data: bytes) -> bytes:
    return crc32(data).to_bytes(4, "big")


def _crc32c(data: bytes) -> bytes:
    import google_crc32c

    return int(google_crc32c.value(data)).to_bytes(4, "big")


#: S3's whole-object checksums (`x-amz-checksum-*`) a GET can check, in botocore's order
#: of preference; crc64nvme and xxhash need the AWS CRT, which botocore would skip as well
_CHECKSUMS: dict[str, Callable[[bytes], bytes]] = {
    "crc32c": _crc32c,
    "crc32": _crc32,
    "sha1": lambda data: hashlib.sha1(data).digest(),
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "sha512": lambda data: hashlib.sha512(data).digest(),
}


def _error_fields(body: bytes, status: int, reason: str) -> tuple[str, str]:
    """(code, message) of an S3 error answer; the HTTP status when it has no XML body
    (botocore's rule: a HEAD, or a proxy's page)."""
    try:
        root = ET.fromstring(body)
        code, message = root.findtext("Code"), root.findtext("Message")
    except ET.ParseError:
        code = message = None
    return code or str(status), message or reason


def _default_ca() -> str | None:
    """botocore's CA bundle when none is configured: certifi's, if installed."""
    try:
        import certifi

        return str(certifi.where())
    except ImportError:
        return None


_SESSION: botocore.session.Session | None = None
_BOTO3: weakref.WeakKeyDictionary[botocore.session.Session, boto3.session.Session] = (
    weakref.WeakKeyDictionary()
)
_SESSION_LOCK = threading.Lock()


def _sessions(given: botocore.session.Session | None) -> tuple[Any, boto3.session.Session]:
    """The botocore session (one per process unless given, as boto3's default session
    was: service models and credentials loaded once; a session per store cost 80 ms of
    CPU at every open) and the one boto3 session around it (boto3 adds its handlers to
    the session it wraps, once)."""
    global _SESSION
    with _SESSION_LOCK:
        if given is None:
            if _SESSION is None:
                _SESSION = botocore.session.get_session()
            given = _SESSION
        if given not in _BOTO3:
            _BOTO3[given] = boto3.session.Session(botocore_session=given)
        return given, _BOTO3[given]


def _endpoint() -> str | None:
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or os.environ.get("S3_ENDPOINT_URL")
    )


class S3Blobs(Blobs):
    def __init__(
        self,
        url: str,
        *,
        create: bool = False,
        max_connections: int = 32,
        object_lock: bool = False,
        session: botocore.session.Session | None = None,
    ) -> None:
        """`session`: the botocore session whose settings and credentials to use (by
        default the process's one, as `boto3.client` shares its default session)."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise RepositoryError(f"bad S3 repository URL {url!r}", "write s3://bucket/prefix")
        self.url = url
        self.concurrency = self.put_concurrency = max_connections
        self.sorted_listing = True  # ListObjectsV2 returns keys in UTF-8 binary order
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if self.prefix:
            self.prefix += "/"
        self.endpoint = _endpoint()
        self.session, boto3_session = _sessions(session)
        connect_timeout = float(os.environ.get("OPENBDR_S3_CONNECT_TIMEOUT", "5"))
        read_timeout = float(os.environ.get("OPENBDR_S3_READ_TIMEOUT", "60"))
        self.client: Any = boto3_session.client(
            "s3",
            endpoint_url=self.endpoint,
            config=Config(
                # a sync's pipeline threads and its puts both use the client: a pool
                # smaller than both together discards connections (and warns) all along
                max_pool_connections=2 * max_connections,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "max_attempts": 1},  # retry.py retries
                s3={"addressing_style": "path"} if self.endpoint else {},
            ),
        )
        self._versioned: bool | None = None
        # where botocore sends the bucket's requests, and how it signs them (after any
        # redirect to the bucket's region): the lean GET's URL and signature scope
        self._bucket_url = ""
        self._signing = ("s3", str(self.client.meta.region_name or "us-east-1"))
        self.client.meta.events.register("before-sign.s3.HeadBucket", self._learn_bucket_url)
        self._check(create, object_lock)
        if object_lock:
            self._check_lock()
        self._credentials = self.session.get_credentials()
        self._checksum_mode = self.client.meta.config.response_checksum_validation == "when_supported"
        self._http, self._target = self._pool(2 * max_connections, connect_timeout, read_timeout)

    def _learn_bucket_url(self, request: AWSRequest, signature_version: str, **kw: Any) -> None:
        signing = request.context.get("signing", {})
        if signature_version not in ("s3v4", "v4"):
            raise RepositoryError(
                f"S3 bucket {self.bucket!r} needs {signature_version} signatures",
                "use a general-purpose bucket (SigV4); S3 Express directory buckets and "
                "multi-region access points are not supported",
            )
        self._bucket_url = request.url.split("?", 1)[0].rstrip("/") + "/"
        self._signing = (
            str(signing.get("signing_name") or kw.get("signing_name") or "s3"),
            str(signing.get("region") or kw.get("region_name") or self._signing[1]),
        )

    def _pool(
        self, size: int, connect: float, read: float
    ) -> tuple[urllib3.HTTPConnectionPool, str]:
        """The GETs' connection pool to the bucket's endpoint, set up as botocore sets up
        the client's: the CA bundle of `AWS_CA_BUNDLE` or the profile's `ca_bundle`,
        certificates verified, the environment's proxy unless `NO_PROXY` names the
        endpoint; and what a request's target starts with (the bucket's path, or its
        whole URL when a plain-HTTP proxy forwards it). One pool, not a `PoolManager`:
        parsing each URL again cost a tenth of a GET's CPU."""
        url = urlparse(self._bucket_url)
        kw: dict[str, Any] = {
            "maxsize": size,
            "timeout": urllib3.Timeout(connect=connect, read=read),
            "retries": False,  # RetryingBlobs retries
        }
        if url.scheme == "https":
            kw["cert_reqs"] = "CERT_REQUIRED"
            ca = self.session.get_config_variable("ca_bundle") or _default_ca()
            if ca:
                kw["ca_certs"] = ca
        proxy = urllib.request.getproxies().get(url.scheme)
        try:
            bypass = bool(urllib.request.proxy_bypass(url.netloc))
        except Exception:  # botocore ignores a NO_PROXY it cannot parse
            bypass = False
        if proxy and not bypass:
            via = urllib3.ProxyManager(proxy, **kw)
            tunnel = url.scheme == "https"  # CONNECT: then requests as without a proxy
            return via.connection_from_url(self._bucket_url), (
                url.path if tunnel else self._bucket_url
            )
        return urllib3.connection_from_url(self._bucket_url, **kw), url.path

    def _check_lock(self) -> None:
        """`--object-lock` on a bucket without it would promise what S3 does not keep."""
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
            enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) not in (
                "ObjectLockConfigurationNotFoundError",
                "ObjectLockConfigurationNotFound",
                "InvalidRequest",
                "404",
            ):
                raise
            enabled = None
        if enabled != "Enabled":
            raise RepositoryError(
                f"S3 bucket {self.bucket!r} does not have Object Lock enabled",
                "Object Lock can only be turned on when a bucket is created: give a new "
                "bucket name, `openbdr repo init s3://NEW-BUCKET/prefix --object-lock` "
                "creates it with Object Lock",
            )

    def _check(self, create: bool, object_lock: bool = False) -> None:
        try:
            with_retries(
                lambda: self.client.head_bucket(Bucket=self.bucket),
                "S3 head_bucket",
                deadline=min(30.0, deadline_seconds()),
            )
        except _UNREACHABLE as exc:
            raise UnreachableError(
                f"cannot reach S3 endpoint {self.endpoint or 'AWS'}: {exc}",
                "check AWS_ENDPOINT_URL_S3 and the network",
            ) from None
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound") and create:
                try:
                    with_retries(
                        lambda: self.client.create_bucket(
                            Bucket=self.bucket,
                            **({"ObjectLockEnabledForBucket": True} if object_lock else {}),
                        ),
                        "create",
                    )
                except botocore.exceptions.ClientError as again:  # an answer lost, then retried
                    if self._code(again) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                return
            if code in ("404", "NotFound") or code in _NO_BUCKET:
                raise self._no_bucket() from None
            if code in _DENIED:
                raise AuthError(
                    f"S3 denied access to bucket {self.bucket!r} ({code})",
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
                ) from None
            raise RepositoryError(f"S3 error on bucket {self.bucket!r}: {exc}") from None
        except botocore.exceptions.NoCredentialsError:
            raise AuthError(
                "no S3 credentials found", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None

    def _no_bucket(self) -> RepositoryError:
        return RepositoryError(
            f"S3 bucket {self.bucket!r} does not exist at {self.endpoint or 'AWS'}",
            f"create it with `openbdr repo init {self.url}`",
        )

    def _key(self, key: str) -> str:
        return self.prefix + key

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def _call(self, op: str, **kwargs: Any) -> Any:
        """One S3 operation through boto3 (retries wrap the store: `RetryingBlobs`)."""
        return getattr(self.client, op)(Bucket=self.bucket, **kwargs)

    @staticmethod
    def _code(exc: botocore.exceptions.ClientError) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._call("put_object", Key=self._key(key), Body=bytes(data))

    def _is_ours(self, key: str, data: bytes) -> bool:
        """After a 412: did an earlier attempt whose answer was lost already write `data`?"""
        try:
            return self.get(key) == data
        except NotFound:
            return False

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            self._call("put_object", Key=self._key(key), Body=data, IfNoneMatch="*")
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return self._is_ours(key, data)
            raise
        return True

    def replace_if(self, key: str, expected: bytes, data: bytes) -> bool:
        try:
            current, etag = self._get(key)
        except NotFound:
            return False
        if current != expected:
            return False
        # RFC 9110 quotes entity tags, and AWS compares them so; Ceph RGW 16 compares the
        # bare value and answers 412 to a quoted one: the bare form is tried next
        for tag in dict.fromkeys([etag, etag.strip('"')]):
            try:
                self._call("put_object", Key=self._key(key), Body=data, IfMatch=tag)
                return True
            except botocore.exceptions.ClientError as exc:
                if self._code(exc) not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    raise
                if self._is_ours(key, data):
                    return True
        return False

    def get(self, key: str) -> bytes:
        return self._get(key)[0]

    def _get(self, key: str) -> tuple[bytes, str]:
        """(bytes, ETag) of one object: a GET signed by botocore, sent by urllib3."""
        path = quote(self._key(key), safe="/~")
        request = AWSRequest("GET", self._bucket_url + path)
        if self._checksum_mode:
            request.headers["x-amz-checksum-mode"] = "ENABLED"
        S3SigV4Auth(self._credentials.get_frozen_credentials(), *self._signing).add_auth(request)
        resp = self._http.urlopen(
            "GET",
            self._target + path,
            headers=dict(request.headers.items()),
            retries=False,
            redirect=False,
            assert_same_host=False,
            decode_content=False,
        )
        data = resp.data
        if resp.status != 200:
            raise self._failed(key, resp.status, resp.reason or "", data)
        length = resp.headers.get("Content-Length")
        if length is not None and int(length) != len(data):  # urllib3 1.x does not check
            raise urllib3.exceptions.ProtocolError(
                f"GET {key}: {len(data)} of {length} bytes before the connection ended"
            )
        if self._checksum_mode:
            self._check_sum(key, data, resp.headers)
        return data, str(resp.headers.get("ETag", ""))

    def _check_sum(self, key: str, data: bytes, headers: Any) -> None:
        """S3's checksum of the object, when it keeps one, checked as botocore checks it
        (`response_checksum_validation = when_supported`, its default)."""
        for name, fn in _CHECKSUMS.items():
            want = headers.get(f"x-amz-checksum-{name}")
            if want is None or "-" in want:  # "-N": a multipart upload's, not the object's
                continue
            if fn(data) != base64.b64decode(want):
                raise CorruptionError(
                    f"{self.url}: object {key} arrived damaged (its {name} does not match "
                    "the one S3 stored)"
                )
            return

    def _failed(self, key: str, status: int, reason: str, body: bytes) -> Exception:
        """A GET's error answer as the SDK's `ClientError` when it may pass (5xx, 429,
        throttling: `RetryingBlobs` retries it), else as one clear error."""
        code, message = _error_fields(body, status, reason)
        exc = botocore.exceptions.ClientError(
            {"Error": {"Code": code, "Message": message},
             "ResponseMetadata": {"HTTPStatusCode": status}},
            "GetObject",
        )
        if is_transient(exc):
            return exc
        if code in ("NoSuchKey", "404"):
            return NotFound(f"{self.url}: no object {key}")
        if code in _NO_BUCKET:
            return self._no_bucket()
        if code in _DENIED or status == 403:
            return AuthError(
                f"S3 denied reading {key} at {self.url} ({code}: {message})",
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy",
            )
        if status in (301, 307, 400) and code in (
            "PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed", "301",
        ):
            return RepositoryError(
                f"S3 bucket {self.bucket!r} is not in region {self._signing[1]} ({code})",
                "set AWS_REGION (or AWS_DEFAULT_REGION) to the bucket's region",
            )
        return OpenBDRError(f"S3 refused reading {key} at {self.url} ({code}: {message})")

    def exists(self, key: str) -> bool:
        try:
            self._call("head_object", Key=self._key(key))
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        cut = len(self.prefix)
        token: dict[str, str] = {}
        while True:  # page by page, each page retried on its own
            page = self._call("list_objects_v2", Prefix=self._key(prefix), **token)
            for item in page.get("Contents", []):
                yield BlobInfo(
                    item["Key"][cut:], int(item["Size"]), item["LastModified"].timestamp()
                )
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    @property
    def versioned(self) -> bool:
        """Versioning on (always with Object Lock): a delete must remove every version,
        or it only hides the object behind a delete marker and frees nothing."""
        if self._versioned is None:
            try:
                status = self._call("get_bucket_versioning").get("Status")
                self._versioned = status in ("Enabled", "Suspended")
            except botocore.exceptions.ClientError:
                self._versioned = True  # not allowed to ask: deleting by version is safe
        return self._versioned

    def delete(self, key: str) -> None:
        if not self.versioned:
            self._call("delete_object", Key=self._key(key))
            return
        full = self._key(key)
        token: dict[str, str] = {}
        while True:
            page = self._call("list_object_versions", Prefix=full, **token)
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if v["Key"] != full:
                    continue
                try:
                    self._call("delete_object", Key=full, VersionId=v["VersionId"])
                except botocore.exceptions.ClientError as exc:
                    if self._code(exc) in ("AccessDenied", "403"):
                        raise LockedObject(
                            f"{self.url}: {key} cannot be deleted (under Object Lock "
                            "retention, or this credential may not delete it)"
                        ) from None
                    raise
            if not page.get("IsTruncated"):
                return
            token = {
                "KeyMarker": page["NextKeyMarker"],
                "VersionIdMarker": page["NextVersionIdMarker"],
            }

    def put_locked(self, key: str, data: bytes | memoryview, mode: str, until: datetime) -> None:
        self._call(
            "put_object",
            Key=self._key(key),
            Body=bytes(data),
            ObjectLockMode=mode,
            ObjectLockRetainUntilDate=until,
        )

    def retain(self, key: str, mode: str, until: datetime) -> None:
        try:
            self._call(
                "put_object_retention",
                Key=self._key(key),
                Retention={"Mode": mode, "RetainUntilDate": until},
            )
        except botocore.exceptions.ClientError as exc:
            code = self._code(exc)
            if code in ("NoSuchKey", "404"):
                raise NotFound(f"{self.url}: no object {key}") from None
            if code not in ("AccessDenied", "403"):
                raise
            # S3 refuses to shorten a retention: fine if it already lasts long enough
            held = self._call("get_object_retention", Key=self._key(key)).get("Retention", {})
            if held.get("RetainUntilDate") is None or held["RetainUntilDate"] < until:
                raise

    def close(self) -> None:
        self.client.close()
        self._http.close()
