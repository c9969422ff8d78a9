"""Targets, policies, hosts and restore points."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .apierrors import RESPONSES, ApiError, not_found
from .auth import DB, Admin, Operator, Viewer, audit, services
from .mirror import refresh_target
from .models import Host, Job, Point, Policy, Target, utcnow
from .platforms import platform_types
from .registry import source_type
from .schemas import (
    ErrorBody,
    HostIn,
    HostOut,
    HostPatch,
    JobOut,
    PointOut,
    PolicyFields,
    PolicyIn,
    PolicyOut,
    RefreshOut,
    SyncIn,
    TargetIn,
    TargetOut,
    TargetPatch,
    VolumeOut,
)
from .services import Services
from .status import host_rows
from .worker import open_target

router = APIRouter(prefix="/api/v1", responses=RESPONSES)
Svc = Annotated[Services, Depends(services)]


def _unique(s: Session, what: str) -> None:
    try:
        s.flush()
    except IntegrityError:
        raise ApiError(409, "conflict", f"{what} already exists", "choose another name") from None


# -- targets ----------------------------------------------------------------------
def target_by_name(s: Session, name: str) -> Target:
    t = s.scalar(select(Target).where(Target.name == name))
    if t is None:
        raise not_found(f"target {name!r}", "list them with GET /api/v1/targets")
    return t


def target_out(t: Target) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "url": t.url, "has_secrets": bool(t.secrets),
            "created": t.created, "last_refresh": t.last_refresh}


@router.get("/targets", response_model=list[TargetOut], tags=["targets"])
def list_targets(s: DB, _p: Viewer) -> list[dict[str, Any]]:
    return [target_out(t) for t in s.scalars(select(Target).order_by(Target.name))]


def _check_root(url: str, svc: Any) -> None:
    """Keep local repositories inside the directories the server was given (if any)."""
    roots = svc.extra.get("repository_roots") or ()
    if not roots or url.startswith(("s3://", "gateway://")):
        return
    path = Path(url.removeprefix("file://")).resolve()
    if not any(path.is_relative_to(r) for r in roots):
        raise ApiError(
            400, "bad_request", f"repository path {url!r} is outside the allowed roots",
            "use a directory below " + ", ".join(str(r) for r in roots),
        )


@router.post("/targets", response_model=TargetOut, status_code=201, tags=["targets"])
def add_target(body: TargetIn, s: DB, p: Admin, svc: Svc) -> dict[str, Any]:
    _check_root(body.url, svc)
    if body.init:
        s.commit()  # no catalog lock while a (possibly remote) repository is created
        open_target(body.url, body.secrets or {}, init=True).close()
    t = Target(name=body.name, url=body.url, secrets=svc.box.seal(body.secrets))
    s.add(t)
    _unique(s, f"target {body.name!r}")
    audit(s, p, "create", "target", body.name, url=body.url, secrets=bool(body.secrets))
    return target_out(t)


@router.get("/targets/{name}", response_model=TargetOut, tags=["targets"])
def get_target(name: str, s: DB, _p: Viewer) -> dict[str, Any]:
    return target_out(target_by_name(s, name))


@router.patch("/targets/{name}", response_model=TargetOut, tags=["targets"])
def patch_target(name: str, body: TargetPatch, s: DB, p: Admin, svc: Svc) -> dict[str, Any]:
    t = target_by_name(s, name)
    if body.url is not None:
        _check_root(body.url, svc)
        t.url = body.url
    if body.secrets is not None:
        t.secrets = svc.box.seal(body.secrets)
    audit(s, p, "update", "target", name, url=body.url, secrets=body.secrets is not None)
    return target_out(t)


@router.delete("/targets/{name}", status_code=204, tags=["targets"])
def delete_target(name: str, s: DB, p: Admin) -> Response:
    t = target_by_name(s, name)
    if s.scalar(select(Host.id).where(Host.target_id == t.id)) is not None:
        raise ApiError(409, "conflict", f"target {name!r} still has hosts",
                       "move or delete its hosts first")
    for job in s.scalars(select(Job).where(Job.target_id == t.id)):
        job.target_id = None
    s.delete(t)
    audit(s, p, "delete", "target", name)
    return Response(status_code=204)


@router.post("/targets/{name}/refresh", response_model=RefreshOut, tags=["targets"])
def refresh(name: str, s: DB, p: Operator, svc: Svc) -> dict[str, int]:
    """Re-read the repository's restore points into the catalog (it stays the truth)."""
    t = target_by_name(s, name)
    url, secrets = t.url, svc.box.open(t.secrets)
    s.commit()  # no catalog lock while the repository is listed
    listed = utcnow()
    repo = open_target(url, secrets)
    try:
        points = repo.points()
    finally:
        repo.close()
    out = refresh_target(s, target_by_name(s, name), points, listed)
    audit(s, p, "refresh", "target", name, **out)
    return out


@router.get("/targets/{name}/volumes", response_model=list[VolumeOut], tags=["targets"])
def target_volumes(name: str, s: DB, _p: Viewer, svc: Svc) -> list[dict[str, Any]]:
    """The volumes of a block-mode target, as its gateway reports them (name, size,
    snapshots, bytes written and carried)."""
    t = target_by_name(s, name)
    if not t.url.startswith("gateway://"):
        raise ApiError(
            400, "bad_request", f"target {name!r} is an object repository: it has no volumes",
            "volumes belong to block-mode targets (gateway://…)",
        )
    url, secrets = t.url, svc.box.open(t.secrets)
    s.commit()  # no catalog lock while the gateway answers
    repo = open_target(url, secrets)
    try:
        return list(repo.volumes())  # type: ignore[attr-defined]
    finally:
        repo.close()


# -- policies ---------------------------------------------------------------------
def policy_by_name(s: Session, name: str) -> Policy:
    pol = s.scalar(select(Policy).where(Policy.name == name))
    if pol is None:
        raise not_found(f"policy {name!r}", "list them with GET /api/v1/policies")
    return pol


def policy_out(pol: Policy) -> dict[str, Any]:
    return {c: getattr(pol, c) for c in PolicyOut.model_fields}


def _apply(pol: Policy, body: PolicyFields) -> dict[str, Any]:
    changed = body.model_dump(exclude_unset=True, exclude={"name"})
    if isinstance(changed.get("retention"), dict):  # unset and null settings: none
        changed["retention"] = {k: v for k, v in changed["retention"].items() if v is not None}
    for key, value in changed.items():
        if value is None and key in ("rpo_seconds", "compression", "compression_level",
                                     "bwlimit", "enabled"):
            continue
        setattr(pol, key, value if value is not None or key.endswith("seconds") else
                ([] if key == "bandwidth_windows" else {}))
    return changed


@router.get("/policies", response_model=list[PolicyOut], tags=["policies"])
def list_policies(s: DB, _p: Viewer) -> list[dict[str, Any]]:
    return [policy_out(x) for x in s.scalars(select(Policy).order_by(Policy.name))]


@router.post("/policies", response_model=PolicyOut, status_code=201, tags=["policies"])
def add_policy(body: PolicyIn, s: DB, p: Operator) -> dict[str, Any]:
    pol = Policy(name=body.name, rpo_seconds=3600, compression="none", compression_level=1,
                 bwlimit=0, bandwidth_windows=[], retention={}, drill_plan={}, copy_plan={},
                 enabled=True)
    changed = _apply(pol, body)
    s.add(pol)
    _unique(s, f"policy {body.name!r}")
    audit(s, p, "create", "policy", body.name, **changed)
    return policy_out(pol)


@router.get("/policies/{name}", response_model=PolicyOut, tags=["policies"])
def get_policy(name: str, s: DB, _p: Viewer) -> dict[str, Any]:
    return policy_out(policy_by_name(s, name))


@router.patch("/policies/{name}", response_model=PolicyOut, tags=["policies"])
def patch_policy(name: str, body: PolicyFields, s: DB, p: Operator) -> dict[str, Any]:
    """Change settings; a paused sync picks up a new compression setting when resumed."""
    pol = policy_by_name(s, name)
    changed = _apply(pol, body)
    audit(s, p, "update", "policy", name, **changed)
    return policy_out(pol)


@router.delete("/policies/{name}", status_code=204, tags=["policies"])
def delete_policy(name: str, s: DB, p: Operator) -> Response:
    pol = policy_by_name(s, name)
    for h in s.scalars(select(Host).where(Host.policy_id == pol.id)):
        h.policy_id = None
    s.delete(pol)
    audit(s, p, "delete", "policy", name)
    return Response(status_code=204)


# -- hosts ------------------------------------------------------------------------
HOST_BY_NAME = select(Host).where(Host.name == bindparam("name"))  # built once: every request


def host_by_name(s: Session, name: str) -> Host:
    h = s.scalar(HOST_BY_NAME, {"name": name})
    if h is None:
        raise not_found(f"host {name!r}", "list them with GET /api/v1/hosts")
    return h


@router.get("/hosts", response_model=list[HostOut], tags=["hosts"])
def list_hosts(
    s: DB, _p: Viewer,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """Every host with its protection state: RPO age vs target, last sync and drill."""
    hosts = list(s.scalars(select(Host).order_by(Host.name).limit(limit).offset(offset)))
    return host_rows(s, hosts)


@router.post("/hosts", response_model=HostOut, status_code=201, tags=["hosts"],
             responses={502: {"model": ErrorBody, "description": "discovering the VM failed"},
                        504: {"model": ErrorBody, "description": "discovering the VM timed out"}})
def add_host(body: HostIn, s: DB, p: Operator, svc: Svc) -> dict[str, Any]:
    """A host with a `source`, or a VM of a platform (`platform` and `vm`)."""
    if body.platform is not None or body.vm is not None:
        from .routes_platforms import add_platform_host

        return add_platform_host(body, s, p, svc)
    if body.source is None:
        raise ApiError(422, "invalid", f"host {body.name}: no source",
                       'give a source ({"type": …}), or a platform and a VM')
    if str(body.source.get("type")) in platform_types():
        raise ApiError(400, "bad_request", f"host {body.name}: source type "
                       f"{body.source.get('type')!r} is a platform's",
                       "add the platform (POST /platforms), then the host with `platform` and "
                       "`vm` (openbdr host add NAME --platform P --vm VM)")
    source_type(body.source).validate(body.source)
    target = target_by_name(s, body.target)
    policy = policy_by_name(s, body.policy) if body.policy else None
    h = Host(name=body.name, source=body.source, target_id=target.id,
             policy_id=policy.id if policy else None, pool=body.pool, enabled=body.enabled,
             disks=[])
    s.add(h)
    _unique(s, f"host {body.name!r}")
    audit(s, p, "create", "host", body.name, source=body.source, target=body.target,
          policy=body.policy, pool=body.pool)
    return host_rows(s, [h])[0]


@router.get("/hosts/{name}", response_model=HostOut, tags=["hosts"])
def get_host(name: str, s: DB, _p: Viewer) -> dict[str, Any]:
    return host_rows(s, [host_by_name(s, name)])[0]


@router.patch("/hosts/{name}", response_model=HostOut, tags=["hosts"])
def patch_host(name: str, body: HostPatch, s: DB, p: Operator) -> dict[str, Any]:
    h = host_by_name(s, name)
    changed = body.model_dump(exclude_unset=True)
    if body.source is not None:
        if h.platform_id is not None:
            raise ApiError(400, "bad_request", f"host {name} is a VM of a platform: its "
                           "source is the platform's", "remove the host and add it again")
        source_type(body.source).validate(body.source)
        h.source = body.source
    if body.target is not None:
        h.target_id = target_by_name(s, body.target).id
    if "policy" in changed:
        h.policy_id = policy_by_name(s, body.policy).id if body.policy else None
    if "pool" in changed:
        h.pool = body.pool
    if body.enabled is not None:
        h.enabled = body.enabled
    audit(s, p, "update", "host", name, **changed)
    return host_rows(s, [h])[0]


@router.delete("/hosts/{name}", status_code=204, tags=["hosts"])
def delete_host(name: str, s: DB, p: Operator) -> Response:
    """Forget a host in the catalog; its restore points stay in the repository."""
    h = host_by_name(s, name)
    s.delete(h)
    audit(s, p, "delete", "host", name)
    return Response(status_code=204)


@router.post("/hosts/{name}/sync", response_model=JobOut, status_code=201, tags=["hosts"])
def sync_now(name: str, s: DB, p: Operator, svc: Svc, body: SyncIn | None = None) -> dict[str, Any]:
    from .routes_jobs import job_out

    h = host_by_name(s, name)
    job = svc.queue.enqueue(s, "sync", host=h, params={"full": bool(body and body.full)},
                            created_by=p.name, priority=20)
    audit(s, p, "sync", "host", name, job=job.id)
    return job_out(s, job)


# -- points -----------------------------------------------------------------------
def _freeze_s(disks: list[dict[str, Any]]) -> float | None:
    """Seconds the host's file systems were frozen during the sync (None: not a freezing
    source). One freeze covers every disk and each disk records it, so the longest sum."""
    sums = [sum(d["freezes_s"]) for d in disks if isinstance(d.get("freezes_s"), list)]
    return round(max(sums), 4) if sums else None


def point_out(pt: Point, host: str) -> dict[str, Any]:
    return {
        "host": host, "id": pt.point_id, "created": pt.created,
        "age_seconds": round((utcnow() - pt.created).total_seconds(), 1),
        "consistency": pt.consistency, "status": pt.status, "size": pt.size,
        "read_bytes": pt.read_bytes, "stored_bytes": pt.stored_bytes, "codec": pt.codec,
        "mode": pt.mode, "duration_s": pt.duration_s, "verified": pt.verified,
        "disks": pt.disks, "drill": pt.drill, "freeze_s": _freeze_s(pt.disks),
        "notes": pt.notes or [],
    }


@router.get("/points", response_model=list[PointOut], tags=["points"])
def list_points(
    s: DB, _p: Viewer,
    host: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[dict[str, Any]]:
    """Restore points, newest first (mirrored from the repositories)."""
    q = select(Point, Host.name).join(Host, Host.id == Point.host_id)
    if host is not None:
        q = q.where(Host.id == host_by_name(s, host).id)
    rows = s.execute(q.order_by(Point.created.desc(), Point.id.desc()).limit(limit)).all()
    return [point_out(pt, name) for pt, name in rows]


@router.get("/points/{host}/{point_id}", response_model=PointOut, tags=["points"])
def get_point(host: str, point_id: str, s: DB, _p: Viewer) -> dict[str, Any]:
    h = host_by_name(s, host)
    pt = s.scalar(select(Point).where(Point.host_id == h.id, Point.point_id == point_id))
    if pt is None:
        raise not_found(f"restore point {point_id!r} of host {host!r}")
    return point_out(pt, h.name)
