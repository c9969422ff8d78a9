"""boto3 clients for one account and region, and calls that retry what AWS says to retry.

Credentials: explicit keys (sealed in the catalog), a named profile, or the standard
chain (environment, shared files, instance role); then optionally an assumed role
(`role_arn`), refreshed before it expires. Endpoints: the region's, or `endpoint_url`
(`ec2_endpoint_url`, `ebs_endpoint_url`, `sts_endpoint_url` for VPC endpoints, or the
tests' fake).

Retries (EBS direct APIs "Error retries" page): RequestThrottledException,
ThrottlingException, ConcurrentLimitExceededException, InternalServerException, any 5xx
and connection errors, with exponential backoff and full jitter; botocore's own retries
are off so that every call is counted and paced here. Other errors become one clear
`PlatformError` line.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from ..platform import PlatformError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE = {
    "RequestThrottledException",
    "ThrottlingException",
    "Throttling",
    "ConcurrentLimitExceededException",
    "InternalServerException",
    "RequestLimitExceeded",  # EC2
    "InternalError",
    "ServiceUnavailable",
    "Unavailable",
    "SlowDown",
}
NETWORK = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError)

#: EBS direct API action of each operation, for the IAM hint of an access error
IAM_ACTION = {
    "list_snapshot_blocks": "ebs:ListSnapshotBlocks",
    "list_changed_blocks": "ebs:ListChangedBlocks",
    "get_snapshot_block": "ebs:GetSnapshotBlock",
    "describe_instances": "ec2:DescribeInstances",
    "describe_volumes": "ec2:DescribeVolumes",
    "describe_snapshots": "ec2:DescribeSnapshots",
    "create_snapshots": "ec2:CreateSnapshots",
    "delete_snapshot": "ec2:DeleteSnapshot",
    "create_tags": "ec2:CreateTags",
}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def error_reason(exc: ClientError) -> str:
    return str(exc.response.get("Reason") or exc.response.get("Error", {}).get("Reason") or "")


def http_status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, NETWORK):
        return True
    if isinstance(exc, ClientError):
        return error_code(exc) in RETRYABLE or http_status(exc) >= 500
    return False


class Backoff:
    """Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff
    And Jitter"): sleep uniform(0, min(cap, base * 2**attempt))."""

    def __init__(self, base: float = 0.05, cap: float = 5.0, attempts: int = 12) -> None:
        self.base, self.cap, self.attempts = base, cap, attempts

    def sleep(self, attempt: int) -> None:
        time.sleep(random.uniform(0, min(self.cap, self.base * (2**attempt))))


class Aws:
    """Clients of one account and region, with counted, retried calls."""

    def __init__(
        self,
        region: str,
        credentials: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        creds = dict(credentials or {})
        opts = dict(options or {})
        if not region:
            raise PlatformError(
                "aws platform: no region given", 'set the endpoint to a region, e.g. "eu-west-1"'
            )
        self.region = region
        self.options = opts
        self.in_flight = max(1, int(opts.get("in_flight", 64)))
        self.backoff = Backoff(attempts=int(opts.get("retries", 12)))
        base_url = opts.get("endpoint_url") or None
        self.urls = {
            "ec2": opts.get("ec2_endpoint_url") or base_url,
            "ebs": opts.get("ebs_endpoint_url") or base_url,
            "sts": opts.get("sts_endpoint_url") or base_url,
        }
        self.session = self._session(creds, opts)
        cfg = Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=self.in_flight + 8,
            connect_timeout=10,
            read_timeout=60,
        )
        self.ec2 = self.session.client("ec2", endpoint_url=self.urls["ec2"], config=cfg)
        self.ebs = self.session.client("ebs", endpoint_url=self.urls["ebs"], config=cfg)
        #: calls per operation (retries included) and retries per error code
        self.calls: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _session(self, creds: dict[str, Any], opts: dict[str, Any]) -> boto3.session.Session:
        kw: dict[str, Any] = {"region_name": self.region}
        if creds.get("access_key_id"):
            kw.update(
                aws_access_key_id=creds["access_key_id"],
                aws_secret_access_key=creds.get("secret_access_key"),
                aws_session_token=creds.get("session_token") or None,
            )
        elif creds.get("profile") or opts.get("profile"):
            kw["profile_name"] = creds.get("profile") or opts.get("profile")
        session = boto3.session.Session(**kw)
        role = creds.get("role_arn") or opts.get("role_arn")
        if role:
            session = self._assume(
                session, str(role), creds.get("external_id") or opts.get("external_id")
            )
        return session

    def _assume(
        self, base: boto3.session.Session, role: str, external_id: str | None
    ) -> boto3.session.Session:
        """A session whose credentials are the role's, refreshed before they expire."""
        from botocore.credentials import RefreshableCredentials
        from botocore.session import get_session

        sts = base.client("sts", endpoint_url=self.urls["sts"])

        def fetch() -> dict[str, str]:
            kw: dict[str, Any] = {"RoleArn": role, "RoleSessionName": "openbdr-sync"}
            if external_id:
                kw["ExternalId"] = external_id
            try:
                c = sts.assume_role(**kw)["Credentials"]
            except (ClientError, BotoCoreError) as exc:
                raise PlatformError(
                    f"aws: cannot assume role {role}: {exc}",
                    "allow sts:AssumeRole for these credentials in the role's trust policy",
                ) from None
            return {
                "access_key": c["AccessKeyId"],
                "secret_key": c["SecretAccessKey"],
                "token": c["SessionToken"],
                "expiry_time": c["Expiration"].isoformat(),
            }

        creds = RefreshableCredentials.create_from_metadata(fetch(), fetch, "sts-assume-role")
        bs = get_session()
        bs._credentials = creds  # botocore's documented way to plug refreshable credentials
        return boto3.session.Session(botocore_session=bs, region_name=self.region)

    # -- calls -------------------------------------------------------------------------------
    def count(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1

    def call(
        self, client: Any, op: str, what: str, give_back: tuple[str, ...] = (), **kw: Any
    ) -> Any:
        """`client.op(**kw)`, retried; `what` names the object for the error line. A
        ValidationException whose Reason is in `give_back` is raised as it is (the
        caller handles expired tokens)."""
        fn: Callable[..., Any] = getattr(client, op)
        for attempt in range(self.backoff.attempts):
            self.count(op)
            try:
                return fn(**kw)
            except (ClientError, *NETWORK) as exc:
                if isinstance(exc, ClientError) and error_reason(exc) in give_back:
                    raise
                if not retryable(exc) or attempt == self.backoff.attempts - 1:
                    if isinstance(exc, ClientError):
                        raise self.translate(exc, op, what) from None
                    raise PlatformError(
                        f"aws {self.region}: {op} of {what} failed: {exc}",
                        "check the network path to the endpoint",
                    ) from None
                with self._lock:
                    key = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
                    self.retries[key] += 1
                self.backoff.sleep(attempt)
            except NoCredentialsError:
                raise PlatformError(
                    f"aws {self.region}: no credentials found",
                    "give access keys, a profile or a role, or run where an instance role applies",
                ) from None
        raise AssertionError("unreachable")

    def translate(self, exc: ClientError, op: str, what: str) -> PlatformError:
        code, reason = error_code(exc), error_reason(exc)
        msg = exc.response.get("Error", {}).get("Message") or str(exc)
        action = IAM_ACTION.get(op, op)
        if code in ("AccessDeniedException", "UnauthorizedOperation", "AccessDenied"):
            if reason == "DEPENDENCY_ACCESS_DENIED" or "kms:" in msg:
                return PlatformError(
                    f"aws {self.region}: {op} of {what} denied by KMS: {msg}",
                    "allow kms:Decrypt (and kms:DescribeKey) on the volume's key for this role",
                )
            return PlatformError(
                f"aws {self.region}: {action} on {what} is not allowed: {msg}",
                f"grant {action} (docs/aws.md has the least-privilege policy)",
            )
        if code in (
            "AuthFailure",
            "UnrecognizedClientException",
            "InvalidClientTokenId",
            "SignatureDoesNotMatch",
        ):
            return PlatformError(
                f"aws {self.region}: the credentials were refused ({code})",
                "check the access key, secret and session token of the platform",
            )
        if code == "ResourceNotFoundException" or code.endswith(".NotFound"):
            return PlatformError(
                f"aws {self.region}: {what} does not exist ({msg})",
                "was it deleted while the sync ran? run the sync again",
            )
        if code == "ValidationException":
            return PlatformError(
                f"aws {self.region}: {op} of {what} was refused: {msg} ({reason or code})",
                "report this with the log: OpenBDR sent a request EBS considers invalid",
            )
        return PlatformError(f"aws {self.region}: {op} of {what} failed: {code}: {msg}")
