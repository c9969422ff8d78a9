"""Request and response bodies of the REST API (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Role = Literal["viewer", "operator", "admin"]
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Field(pattern=NAME, min_length=1, max_length=128)
YEARS10 = 10 * 365 * 86400
MAXINT = 10**15  # exact as a JSON float too
#: a row id in a path: bounded so no database overflows
Id = Annotated[int, Path(ge=0, le=2**31 - 1)]


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable: not_found, forbidden, conflict, …")
    message: str = Field(description="what failed and on which object")
    hint: str | None = Field(default=None, description="what to do about it")
    fields: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- auth -------------------------------------------------------------------------
class LoginIn(Strict):
    name: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class TokenOut(BaseModel):
    id: int
    name: str
    user: str
    role: Role
    token: str | None = Field(default=None, description="shown once, at creation")
    created: datetime
    expires: datetime | None = None
    last_used: datetime | None = None


class MeOut(BaseModel):
    name: str
    role: str
    kind: Literal["user", "agent"]


class UserIn(Strict):
    name: str = Name
    role: Role
    password: str | None = Field(default=None, min_length=8, max_length=1024)


class UserOut(BaseModel):
    id: int
    name: str
    role: Role
    created: datetime


class TokenIn(Strict):
    user: str = Name
    name: str = Field(default="api", min_length=1, max_length=128)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


# -- targets ----------------------------------------------------------------------
def _target_url(url: str | None) -> str | None:
    """A repository URL must not depend on the server's working directory."""
    if url is None or url.startswith(("s3://", "gateway://", "/", "file:///")):
        return url
    raise ValueError("must be an absolute directory path, s3://bucket/prefix or gateway://host")


TargetUrl = Annotated[str, AfterValidator(_target_url)]


class TargetIn(Strict):
    name: str = Name
    url: TargetUrl = Field(
        min_length=1, max_length=1024, description="absolute directory path, s3://bucket/prefix or gateway://host:port"
    )
    secrets: dict[str, str] | None = Field(
        default=None, description="e.g. AWS_ACCESS_KEY_ID…; encrypted at rest, never returned"
    )
    init: bool = Field(default=False, description="create the repository if it does not exist")


class TargetPatch(Strict):
    url: TargetUrl | None = Field(default=None, min_length=1, max_length=1024)
    secrets: dict[str, str] | None = None


class TargetOut(BaseModel):
    id: int
    name: str
    url: str
    has_secrets: bool
    created: datetime
    last_refresh: datetime | None = None


class VolumeOut(BaseModel):
    """One volume of a block-mode (gateway) target: a protected disk written in place."""

    volume: str
    host: str
    size: int
    #: restore points (volume snapshots) it holds, oldest first
    snapshots: list[str]
    #: decompressed bytes the syncs of those points wrote into it
    written_bytes: int = 0
    #: bytes those syncs carried on the wire (compressed)
    stored_bytes: int = 0


class RefreshOut(BaseModel):
    added: int
    removed: int
    points: int


# -- policies ---------------------------------------------------------------------
class Window(Strict):
    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    rate: int = Field(ge=0, le=MAXINT, description="bytes per second, 0 = unlimited")


class Retention(Strict):
    """What retention keeps (a point is kept if any count names it, or if it is protected;
    the newest always) and how often it and gc run (docs/control.md)."""

    keep_last: int | None = Field(default=None, ge=0, le=1_000_000,
                                  description="the N newest points")
    keep_hourly: int | None = Field(default=None, ge=0, le=1_000_000,
                                    description="the newest point of each of N hours")
    keep_daily: int | None = Field(default=None, ge=0, le=1_000_000)
    keep_weekly: int | None = Field(default=None, ge=0, le=1_000_000)
    keep_monthly: int | None = Field(default=None, ge=0, le=1_000_000)
    every_seconds: int | None = Field(default=None, ge=1, le=YEARS10,
                                      description="retention interval per host (default 1 day)")
    gc_every_seconds: int | None = Field(
        default=None, ge=1, le=YEARS10,
        description="gc interval of the hosts' target (default 7 days; gc also runs after "
        "a retention that forgot points)")
    gc_margin_seconds: int | None = Field(
        default=None, ge=0, le=YEARS10,
        description="gc keeps unreferenced chunks younger than this (default 3600; the "
        "largest of a target's policies applies)")


class CopyPlan(Strict):
    """Copy the policy's hosts' points to a second target (docs/copy.md)."""

    target: str = Name
    every_seconds: int = Field(default=86400, ge=300, le=YEARS10)
    keep_last: int = Field(default=0, ge=0, le=MAXINT)
    keep_hourly: int = Field(default=0, ge=0, le=MAXINT)
    keep_daily: int = Field(default=0, ge=0, le=MAXINT)
    keep_weekly: int = Field(default=0, ge=0, le=MAXINT)
    keep_monthly: int = Field(default=0, ge=0, le=MAXINT)


class PolicyFields(Strict):
    rpo_seconds: int | None = Field(default=None, ge=30, le=365 * 86400)
    full_resync_seconds: int | None = Field(default=None, ge=3600, le=YEARS10)
    compression: Literal["none", "zstd", "lz4"] | None = None
    compression_level: int | None = Field(default=None, ge=1, le=19)
    bwlimit: int | None = Field(default=None, ge=0, le=MAXINT)
    bandwidth_windows: list[Window] | None = None
    retention: Retention | None = None
    verify_seconds: int | None = Field(default=None, ge=60, le=YEARS10)
    drill_seconds: int | None = Field(default=None, ge=3600, le=YEARS10)
    drill_plan: dict[str, Any] | None = None
    copy_plan: CopyPlan | None = None
    enabled: bool | None = None


class PolicyIn(PolicyFields):
    name: str = Name


class PolicyOut(BaseModel):
    id: int
    name: str
    rpo_seconds: int
    full_resync_seconds: int | None
    compression: str
    compression_level: int
    bwlimit: int
    bandwidth_windows: list[dict[str, Any]]
    retention: dict[str, Any]
    verify_seconds: int | None
    drill_seconds: int | None
    drill_plan: dict[str, Any]
    copy_plan: dict[str, Any] = Field(default_factory=dict)
    enabled: bool
    created: datetime


# -- hosts ------------------------------------------------------------------------
class HostIn(Strict):
    name: str = Name
    source: dict[str, Any] | None = Field(
        default=None, description='{"type": "image", "paths": [...]}; see /kinds. '
        "None for a VM of a platform (give `platform` and `vm`)")
    platform: str | None = Field(default=None, pattern=NAME, max_length=128,
                                 description="an agentless host: a VM of this platform")
    vm: str | None = Field(default=None, min_length=1, max_length=256,
                           description="the VM's platform id or its (unique) name")
    target: str = Name
    policy: str | None = Field(default=None, pattern=NAME, max_length=128)
    pool: str | None = Field(
        default=None, pattern=NAME, max_length=128,
        description="agents of this pool run the host's jobs; none = the server itself",
    )
    enabled: bool = True


class HostPatch(Strict):
    source: dict[str, Any] | None = None
    target: str | None = Field(default=None, pattern=NAME, max_length=128)
    policy: str | None = Field(default=None, pattern=NAME, max_length=128)
    pool: str | None = Field(default=None, pattern=NAME, max_length=128)
    enabled: bool | None = None


class PointBrief(BaseModel):
    id: str
    created: datetime
    age_seconds: float
    consistency: str
    status: str
    verified: datetime | None = None


class JobBrief(BaseModel):
    id: int
    kind: str
    state: str
    created: datetime
    finished: datetime | None = None
    error: str | None = None
    progress: dict[str, Any] = {}
    result: dict[str, Any] = {}


class HostStatus(BaseModel):
    protection: Literal["ok", "warning", "breached", "unprotected", "disabled"]
    rpo_seconds: int | None
    last_point: PointBrief | None
    points: int
    stored_bytes: int
    read_bytes: int
    last_sync: JobBrief | None
    last_drill: JobBrief | None
    active_job: JobBrief | None
    open_alerts: int
    #: per destination target: its newest copied point and how old it is (a second RPO)
    copies: list[dict[str, Any]] = Field(default_factory=list)


class HostOut(BaseModel):
    id: int
    name: str
    source: dict[str, Any]
    target: str
    policy: str | None
    pool: str | None
    enabled: bool
    disks: list[dict[str, Any]]
    created: datetime
    status: HostStatus
    platform: str | None = None
    vm: str | None = None


# -- jobs -------------------------------------------------------------------------
class JobIn(Strict):
    kind: str = Field(min_length=1, max_length=32)
    host: str | None = Field(default=None, pattern=NAME, max_length=128)
    target: str | None = Field(default=None, pattern=NAME, max_length=128)
    params: dict[str, Any] = {}


class SyncIn(Strict):
    full: bool = False


class JobOut(BaseModel):
    id: int
    kind: str
    state: str
    host: str | None
    target: str | None
    pool: str | None
    params: dict[str, Any]
    progress: dict[str, Any]
    result: dict[str, Any]
    error: str | None
    attempts: int
    lease_owner: str | None
    lease_expires: datetime | None
    created_by: str
    created: datetime
    started: datetime | None
    finished: datetime | None


class JobLogOut(BaseModel):
    ts: datetime
    level: str
    message: str


class PointOut(BaseModel):
    host: str
    id: str
    created: datetime
    age_seconds: float
    consistency: str
    status: str
    size: int
    read_bytes: int
    stored_bytes: int
    codec: str
    mode: str
    duration_s: float
    verified: datetime | None
    disks: list[dict[str, Any]]
    drill: dict[str, Any]
    #: seconds the file systems were frozen for this point (the agent); None: no freeze
    freeze_s: float | None = None
    #: how the source took the snapshot (quiesce outcome), as the repository records it
    notes: list[str] = []


class AlertOut(BaseModel):
    id: int
    kind: str
    severity: str
    host: str | None
    job_id: int | None
    message: str
    opened: datetime
    resolved: datetime | None
    acknowledged_by: str | None


class AuditOut(BaseModel):
    id: int
    ts: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    detail: dict[str, Any]


# -- agents -----------------------------------------------------------------------
class EnrolmentIn(Strict):
    pool: str = Name
    expires_in_hours: int = Field(default=24, ge=1, le=24 * 30)


class EnrolmentOut(BaseModel):
    token: str
    pool: str
    expires: datetime


class EnrolIn(Strict):
    token: str = Field(min_length=8, max_length=256)
    name: str = Name
    version: str = Field(default="", max_length=32)


class EnrolOut(BaseModel):
    agent_id: int
    name: str
    pool: str
    credential: str


class AgentOut(BaseModel):
    id: int
    name: str
    pool: str
    enrolled: datetime
    last_seen: datetime | None
    version: str
    disabled: bool


class LeaseIn(Strict):
    worker: str = Field(default="0", pattern=r"^[A-Za-z0-9._-]{1,64}$")


class LeaseOut(BaseModel):
    job: dict[str, Any] | None


class HeartbeatIn(Strict):
    worker: str = Field(default="0", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    progress: dict[str, Any] = {}
    logs: list[tuple[str, str]] = Field(default=[], max_length=1000)


class StateOut(BaseModel):
    state: str


class FinishIn(Strict):
    worker: str = Field(default="0", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    outcome: Literal["succeeded", "failed", "stopped", "retry"]
    result: dict[str, Any] | None = None
    error: str | None = Field(default=None, max_length=10000)


# -- overview ---------------------------------------------------------------------
class KindsOut(BaseModel):
    jobs: dict[str, dict[str, Any]]
    sources: dict[str, dict[str, Any]]
    platforms: dict[str, dict[str, Any]] = {}


# -- platforms --------------------------------------------------------------------
class PlatformIn(Strict):
    name: str = Name
    type: str = Field(min_length=1, max_length=64,
                      description="libvirt, openstack, aws, vmware, oci, fusioncompute; see /kinds")
    endpoint: str = Field(min_length=1, max_length=1024,
                          description="e.g. qemu+ssh://root@kvm1/system, https://vcenter…")
    credentials: dict[str, str] | None = Field(
        default=None, description="sealed in the catalog, sent only to the workers that run "
        "the platform's jobs; never returned")
    options: dict[str, Any] = {}
    pool: str | None = Field(
        default=None, pattern=NAME, max_length=128,
        description="sync proxies of this pool reach the platform; none = the server itself")


class PlatformPatch(Strict):
    endpoint: str | None = Field(default=None, min_length=1, max_length=1024)
    credentials: dict[str, str] | None = None
    options: dict[str, Any] | None = None
    pool: str | None = Field(default=None, pattern=NAME, max_length=128)


class PlatformOut(BaseModel):
    id: int
    name: str
    type: str
    endpoint: str
    options: dict[str, Any]
    pool: str | None
    has_credentials: bool
    created: datetime
    last_test: datetime | None
    last_test_ok: bool | None
    last_test_message: str | None
    last_discovery: datetime | None
    vm_count: int
    hosts: int


class PlatformTestOut(BaseModel):
    platform: str
    ok: bool
    message: str
    job: int


class VMDiskOut(BaseModel):
    name: str
    size: int
    bus: str = ""
    backing: str = ""
    format: str = ""
    unsupported: str | None = None


class VMOut(BaseModel):
    id: str
    name: str
    power_state: str
    disks: list[VMDiskOut]
    tags: dict[str, str] = {}
    #: the host protecting this VM (None: not protected)
    host: str | None = None


class DiscoverOut(BaseModel):
    platform: str
    discovered: datetime | None
    job: int | None
    vms: list[VMOut]


class ProtectIn(Strict):
    vms: list[str] = Field(min_length=1, max_length=1000, description="VM ids or names")
    target: str = Name
    policy: str | None = Field(default=None, pattern=NAME, max_length=128)
    #: VM id → host name (default: the VM's name, made a valid host name)
    names: dict[str, Annotated[str, Field(pattern=NAME, max_length=128)]] = {}


class OverviewOut(BaseModel):
    hosts: int
    protected: int
    breached: int
    unprotected: int
    jobs: dict[str, int]
    open_alerts: int
    stored_bytes: int
    agents: int
