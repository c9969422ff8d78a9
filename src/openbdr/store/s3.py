"""`Blobs` on S3 (AWS, Ceph RGW, MinIO, …) through boto3.

The endpoint and credentials come from the standard AWS settings (`AWS_ENDPOINT_URL_S3`
or `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, …); `S3_ENDPOINT_URL` is honoured
too. S3 puts are atomic and durable on success, so `flush()` has nothing to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import boto3
import botocore.exceptions
from botocore.config import Config

from ..errors import AuthError, RepositoryError, UnreachableError
from .blobs import BlobInfo, Blobs, LockedObject, NotFound
from .retry import deadline_seconds, is_transient, with_retries

_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


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
    ) -> None:
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
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            config=Config(
                # a sync's pipeline threads and its puts both use the client: a pool
                # smaller than both together discards connections (and warns) all along
                max_pool_connections=2 * max_connections,
                connect_timeout=float(os.environ.get("OPENBDR_S3_CONNECT_TIMEOUT", "5")),
                read_timeout=float(os.environ.get("OPENBDR_S3_READ_TIMEOUT", "60")),
                retries={"mode": "standard", "max_attempts": 1},  # retry.py retries
                s3={"addressing_style": "path"} if self.endpoint else {},
            ),
        )
        self._versioned: bool | None = None
        self._check(create, object_lock)
        if object_lock:
            self._check_lock()

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
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise RepositoryError(
                    f"S3 bucket {self.bucket!r} does not exist at {self.endpoint or 'AWS'}",
                    f"create it with `openbdr repo init {self.url}`",
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise AuthError(
                    f"S3 denied access to bucket {self.bucket!r} ({code})",
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
                ) from None
            raise RepositoryError(f"S3 error on bucket {self.bucket!r}: {exc}") from None
        except botocore.exceptions.NoCredentialsError:
            raise AuthError(
                "no S3 credentials found", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None

    def _key(self, key: str) -> str:
        return self.prefix + key

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def _call(self, op: str, read: bool = False, **kwargs: Any) -> Any:
        """One S3 operation (retries wrap the store: `RetryingBlobs`); `read` reads the body."""
        res = getattr(self.client, op)(Bucket=self.bucket, **kwargs)
        if read:
            res["Data"] = res["Body"].read()
        return res

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
            obj = self._call("get_object", read=True, Key=self._key(key))
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return False
            raise
        if obj["Data"] != expected:
            return False
        etag = str(obj["ETag"])
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
        try:
            obj = self._call("get_object", read=True, Key=self._key(key))
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                raise NotFound(f"{self.url}: no object {key}") from None
            raise
        return bytes(obj["Data"])

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
            page = self._call("list_objects_v2", False, Prefix=self._key(prefix), **token)
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
            page = self._call("list_object_versions", False, Prefix=full, **token)
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
