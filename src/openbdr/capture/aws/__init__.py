"""AWS EC2 without an agent: EBS snapshots read through the EBS direct APIs (docs/aws.md).

Registers the platform type `aws` (endpoint: a region, optionally `REGION@URL`) and the
source type of the same name, whose spec is
`{"type": "aws", "platform": {"endpoint", "credentials", "options"}, "vm": INSTANCE}`.
"""

from __future__ import annotations

from typing import Any

from ..platform import PlatformError, PlatformType, register_platform
from ..registry import SourceType, register_source
from .host import AwsHost
from .platform import AwsPlatform

CREDENTIALS = {
    "access_key_id": "access key (empty: the standard chain: environment, files, instance role)",
    "secret_access_key": "secret key",
    "session_token": "session token of temporary keys",
    "role_arn": "role to assume with these credentials",
    "external_id": "external id the role's trust policy asks for",
}
OPTIONS = {
    "endpoint_url": "EC2 and EBS endpoint (VPC endpoints, tests)",
    "ec2_endpoint_url": "EC2 endpoint only",
    "ebs_endpoint_url": "EBS direct API endpoint only",
    "sts_endpoint_url": "STS endpoint for the assumed role",
    "profile": "named profile of the shared AWS files",
    "in_flight": "GetSnapshotBlock requests in flight (default 64)",
    "snapshot_timeout": "seconds to wait for snapshots to complete (default 21600)",
    "poll_interval": "seconds between snapshot state polls (default 2)",
    "resume_max_age": "seconds a killed run's snapshots are read again (default 43200)",
}


def _open_platform(
    endpoint: str, credentials: dict[str, Any], options: dict[str, Any]
) -> AwsPlatform:
    return AwsPlatform(endpoint, credentials, options)


def _validate(spec: dict[str, Any]) -> None:
    plat = spec.get("platform")
    if not isinstance(plat, dict) or not plat.get("endpoint"):
        raise PlatformError(
            "source type aws needs `platform.endpoint`: the region (e.g. eu-west-1)",
            '{"type": "aws", "platform": {"endpoint": "eu-west-1"}, "vm": "i-0123456789abcdef0"}',
        )
    if not isinstance(spec.get("vm"), str) or not spec["vm"]:
        raise PlatformError("source type aws needs `vm`: the instance id or Name tag")


def _open_source(host: str, spec: dict[str, Any]) -> AwsHost:
    plat = spec["platform"]
    p = AwsPlatform(
        str(plat["endpoint"]), dict(plat.get("credentials") or {}), dict(plat.get("options") or {})
    )
    return p.open_host(host, str(spec["vm"]), dict(spec.get("options") or {}))


register_platform(
    PlatformType(
        "aws",
        _open_platform,
        "AWS EC2 instances through EBS snapshots and the EBS direct APIs",
        CREDENTIALS,
        OPTIONS,
    )
)
register_source(
    SourceType(
        "aws",
        _open_source,
        _validate,
        "an EC2 instance, agentless: EBS snapshots read through the EBS direct APIs",
        {"platform": "endpoint (region), credentials, options", "vm": "instance id or Name tag"},
    )
)

__all__ = ["AwsHost", "AwsPlatform"]
