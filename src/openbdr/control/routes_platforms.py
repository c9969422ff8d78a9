"""Platforms: add, list, show, change, remove; test and discover (jobs that run where the
platform is reachable, awaited here); protect discovered VMs as hosts."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .apierrors import RESPONSES, ApiError, not_found
from .auth import DB, Admin, Operator, Principal, Viewer, audit, services
from .db import transaction
from .jobs import FINAL
from .models import Host, Job, Platform, utcnow
from .platform_jobs import DISCOVER, TEST
from .platforms import VMNotFound, find_vm, host_name_for, platform_types, unsupported
from .routes_catalog import _unique, policy_by_name, target_by_name
from .schemas import (
    DiscoverOut,
    ErrorBody,
    HostIn,
    HostOut,
    PlatformIn,
    PlatformOut,
    PlatformPatch,
    PlatformTestOut,
    ProtectIn,
)
from .services import Services
from .status import host_rows

router = APIRouter(prefix="/api/v1", responses=RESPONSES)
Svc = Annotated[Services, Depends(services)]
#: seconds the API waits for a platform job by default (a proxy polls every few seconds)
WAIT = 60.0
Timeout = Annotated[float, Query(ge=1, le=600, description="seconds to wait for the job")]
#: a platform job that failed on its worker (502) or that nobody finished in time (504)
WAITED: dict[int | str, dict[str, Any]] = {
    502: {"model": ErrorBody, "description": "the platform job failed on its worker"},
    504: {"model": ErrorBody, "description": "no proxy (or worker) finished the job in time"},
}


def platform_by_name(s: Session, name: str) -> Platform:
    p = s.scalar(select(Platform).where(Platform.name == name))
    if p is None:
        raise not_found(f"platform {name!r}", "list them with GET /api/v1/platforms")
    return p


def platform_out(s: Session, p: Platform) -> dict[str, Any]:
    hosts = s.scalar(select(func.count()).select_from(Host).where(Host.platform_id == p.id))
    return {"id": p.id, "name": p.name, "type": p.type, "endpoint": p.endpoint,
            "options": p.options or {}, "pool": p.pool, "has_credentials": bool(p.credentials),
            "created": p.created, "last_test": p.last_test, "last_test_ok": p.last_test_ok,
            "last_test_message": p.last_test_message, "last_discovery": p.last_discovery,
            "vm_count": len(p.vms or []), "hosts": int(hosts or 0)}


def _check_type(name: str) -> None:
    types = platform_types()
    if name not in types:
        raise ApiError(400, "bad_request", f"unknown platform type {name!r}",
                       f"use one of: {', '.join(sorted(types)) or '(none installed)'}")


@router.get("/platforms", response_model=list[PlatformOut], tags=["platforms"])
def list_platforms(s: DB, _p: Viewer) -> list[dict[str, Any]]:
    return [platform_out(s, p) for p in s.scalars(select(Platform).order_by(Platform.name))]


@router.post("/platforms", response_model=PlatformOut, status_code=201, tags=["platforms"])
def add_platform(body: PlatformIn, s: DB, p: Admin, svc: Svc) -> dict[str, Any]:
    """Register an endpoint; its credentials are sealed and never returned. Test it with
    `POST /platforms/{name}/test`."""
    _check_type(body.type)
    row = Platform(name=body.name, type=body.type, endpoint=body.endpoint,
                   credentials=svc.box.seal(body.credentials), options=body.options,
                   pool=body.pool, vms=[])
    s.add(row)
    _unique(s, f"platform {body.name!r}")
    audit(s, p, "create", "platform", body.name, type=body.type, endpoint=body.endpoint,
          pool=body.pool, credentials=sorted(body.credentials or {}))
    return platform_out(s, row)


@router.get("/platforms/{name}", response_model=PlatformOut, tags=["platforms"])
def get_platform(name: str, s: DB, _p: Viewer) -> dict[str, Any]:
    return platform_out(s, platform_by_name(s, name))


@router.patch("/platforms/{name}", response_model=PlatformOut, tags=["platforms"])
def patch_platform(name: str, body: PlatformPatch, s: DB, p: Admin, svc: Svc) -> dict[str, Any]:
    """Change the endpoint, credentials (replaced whole), options or proxy pool; the
    platform's hosts' next jobs use them."""
    row = platform_by_name(s, name)
    changed = body.model_dump(exclude_unset=True)
    if body.endpoint is not None:
        row.endpoint = body.endpoint
    if body.credentials is not None:
        row.credentials = svc.box.seal(body.credentials)
    if body.options is not None:
        row.options = body.options
    if "pool" in changed:
        row.pool = body.pool
        for h in s.scalars(select(Host).where(Host.platform_id == row.id)):
            h.pool = body.pool
    changed.pop("credentials", None)
    audit(s, p, "update", "platform", name, **changed,
          credentials=body.credentials is not None)
    return platform_out(s, row)


@router.delete("/platforms/{name}", status_code=204, tags=["platforms"])
def delete_platform(name: str, s: DB, p: Admin) -> Response:
    row = platform_by_name(s, name)
    hosts = list(s.scalars(select(Host.name).where(Host.platform_id == row.id)))
    if hosts:
        raise ApiError(409, "conflict", f"platform {name!r} still protects host(s) "
                       f"{', '.join(hosts[:5])}{' …' if len(hosts) > 5 else ''}",
                       "remove those hosts first (their restore points stay)")
    s.delete(row)
    audit(s, p, "delete", "platform", name)
    return Response(status_code=204)


# -- test and discovery: jobs where the platform is reachable ----------------------
def run_platform_job(s: Session, svc: Services, row: Platform, kind: str, who: Principal,
                     timeout: float) -> tuple[int, dict[str, Any]]:
    """Queue a platform job for the platform's pool, wait for it, and return (job id,
    result); a refusal by the platform is a 400 with its error line."""
    name, pool = row.name, row.pool
    job = svc.queue.enqueue(s, kind, params={"platform_id": row.id, "platform": name},
                            created_by=who.name, priority=30, pool=pool)
    jid = job.id
    audit(s, who, kind.removeprefix("platform-"), "platform", name, job=jid)
    s.commit()  # the worker must see the job; no catalog lock is held while waiting
    deadline = time.monotonic() + timeout
    while True:
        with svc.factory() as r:
            j = r.get_one(Job, jid)
            state, result, error, owner = j.state, dict(j.result or {}), j.error, j.lease_owner
            r.rollback()
        if state in FINAL:
            break
        if time.monotonic() >= deadline:
            _give_up(svc, jid)
            if state == "queued":
                where = (f"no sync proxy of pool {pool!r}" if pool else
                         "none of the server's embedded workers")
                hint = (f"start a proxy of pool {pool!r} that reaches {row.endpoint}: "
                        "`openbdr agent enrol` with an enrolment token of that pool, then "
                        "`openbdr agent run`" if pool else
                        "they may all be busy, or the server runs with --workers 0; try "
                        "again, or give the platform a proxy pool")
                raise ApiError(504, "timeout", f"{where} took the {kind} job {jid} of "
                               f"platform {name} within {timeout:.0f} s", hint)
            raise ApiError(504, "timeout", f"the {kind} job {jid} of platform {name} did not "
                           f"finish within {timeout:.0f} s on {owner}",
                           "the platform may be slow to answer; try again with a longer timeout")
        time.sleep(0.2)
    s.expire_all()  # the job's success hook changed the platform row in its own session
    if state != "succeeded":
        raise ApiError(502, "job_failed", f"the {kind} job {jid} of platform {name} "
                       f"{state}: {error or 'no reason given'}",
                       f"see `openbdr job show {jid} --logs`")
    if not result.get("ok"):
        code = "unknown_vm" if "UnknownVM" in result.get("error_types", []) else "platform"
        raise ApiError(400, code, f"platform {name}: {result.get('error')}", result.get("hint"))
    return jid, result


def _give_up(svc: Services, jid: int) -> None:
    """A job nobody took is cancelled, so that it does not run long after the answer."""
    with transaction(svc.factory) as s:
        j = s.get_one(Job, jid)
        if j.state == "queued":
            svc.queue.cancel(s, j)


@router.post("/platforms/{name}/test", response_model=PlatformTestOut, tags=["platforms"],
             responses=WAITED)
def test_platform(name: str, s: DB, p: Operator, svc: Svc, timeout: Timeout = WAIT
                  ) -> dict[str, Any]:
    """Reach the endpoint with the stored credentials, from where its jobs run (a proxy of
    its pool, or the server). An unreachable endpoint or refused credentials: 400 with the
    platform's error; no proxy answering in time: 504."""
    row = platform_by_name(s, name)
    jid, result = run_platform_job(s, svc, row, TEST, p, timeout)
    return {"platform": name, "ok": True, "message": str(result.get("message", "")), "job": jid}


def _vms_out(s: Session, row: Platform, vms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    protected = dict(s.execute(select(Host.vm, Host.name).where(Host.platform_id == row.id)).all())
    return [{**vm, "host": protected.get(vm.get("id"))} for vm in vms]


@router.post("/platforms/{name}/discover", response_model=DiscoverOut, tags=["platforms"],
             responses=WAITED)
def discover(name: str, s: DB, p: Operator, svc: Svc, timeout: Timeout = WAIT
             ) -> dict[str, Any]:
    """List the platform's VMs with their disks and power state (and which host protects
    each); the catalog keeps the list (`GET /platforms/{name}/vms`)."""
    row = platform_by_name(s, name)
    jid, _ = run_platform_job(s, svc, row, DISCOVER, p, timeout)
    row = platform_by_name(s, name)
    return {"platform": name, "discovered": row.last_discovery or utcnow(), "job": jid,
            "vms": _vms_out(s, row, list(row.vms or []))}


@router.get("/platforms/{name}/vms", response_model=DiscoverOut, tags=["platforms"])
def last_discovery(name: str, s: DB, _p: Viewer) -> dict[str, Any]:
    """The VMs of the last discovery (none yet: an empty list)."""
    row = platform_by_name(s, name)
    return {"platform": name, "discovered": row.last_discovery, "job": None,
            "vms": _vms_out(s, row, list(row.vms or []))}


# -- protecting VMs as hosts ------------------------------------------------------
def resolve_vm(s: Session, svc: Services, row: Platform, ref: str, who: Principal
               ) -> dict[str, Any]:
    """A VM by id or name: from the last discovery, else from a new one."""
    try:
        vm = find_vm(list(row.vms or []), ref, row.name)
        if vm is None:
            pid = row.id
            run_platform_job(s, svc, row, DISCOVER, who, WAIT)
            row = s.get_one(Platform, pid)
            vm = find_vm(list(row.vms or []), ref, row.name)
    except VMNotFound as exc:
        raise ApiError(400, "unknown_vm", exc.what, exc.hint) from None
    if vm is None:
        raise ApiError(400, "unknown_vm", f"no VM {ref!r} on {row.type} platform {row.name}",
                       f"list them with `openbdr platform discover {row.name}`")
    why = unsupported(vm)
    if why:
        raise ApiError(400, "unsupported", f"VM {vm['name']} ({vm['id']}) on platform "
                       f"{row.name} cannot be protected: {'; '.join(why)}",
                       "change the disk's format or bus on the platform, then discover again")
    return vm


def _vm_host(s: Session, row: Platform, vm: dict[str, Any], name: str, target: str,
             policy: str | None, enabled: bool = True) -> Host:
    other = s.scalar(select(Host.name).where(Host.platform_id == row.id, Host.vm == vm["id"]))
    if other is not None:
        raise ApiError(409, "conflict", f"VM {vm['name']} ({vm['id']}) of platform {row.name} "
                       f"is already protected as host {other}", "choose another VM")
    h = Host(name=name, source={"type": row.type, "vm": vm["id"]},
             target_id=target_by_name(s, target).id,
             policy_id=policy_by_name(s, policy).id if policy else None,
             pool=row.pool, enabled=enabled, disks=[], platform_id=row.id, vm=vm["id"])
    s.add(h)
    _unique(s, f"host {name!r}")
    return h


def add_platform_host(body: HostIn, s: Session, p: Principal, svc: Services) -> dict[str, Any]:
    """`POST /hosts` with `platform` and `vm` (routes_catalog hands it over)."""
    if body.platform is None or body.vm is None or body.source is not None:
        raise ApiError(422, "invalid", "a VM host needs both `platform` and `vm`, and no "
                       "`source`", "give either a source, or a platform and a VM")
    row = platform_by_name(s, body.platform)
    if body.pool is not None and body.pool != row.pool:
        raise ApiError(400, "bad_request", f"host {body.name}: the jobs of platform "
                       f"{row.name}'s VMs run on its proxy pool ({row.pool or 'the server'})",
                       "leave out the pool, or change the platform's pool")
    target_by_name(s, body.target)
    if body.policy:
        policy_by_name(s, body.policy)
    vm = resolve_vm(s, svc, row, body.vm, p)
    row = platform_by_name(s, body.platform)
    h = _vm_host(s, row, vm, body.name, body.target, body.policy, body.enabled)
    audit(s, p, "create", "host", body.name, platform=row.name, vm=vm["id"],
          target=body.target, policy=body.policy)
    return host_rows(s, [h])[0]


@router.post("/platforms/{name}/protect", response_model=list[HostOut], status_code=201,
             tags=["platforms"], responses=WAITED)
def protect(name: str, body: ProtectIn, s: DB, p: Operator, svc: Svc) -> list[dict[str, Any]]:
    """Protect several discovered VMs at once, one host each (named after the VM unless
    `names` says otherwise), with one target and policy; all or none."""
    row = platform_by_name(s, name)
    target_by_name(s, body.target)
    if body.policy:
        policy_by_name(s, body.policy)
    vms = [resolve_vm(s, svc, row, ref, p) for ref in body.vms]
    row = platform_by_name(s, name)
    hosts = []
    for vm in vms:
        hname = body.names.get(vm["id"]) or host_name_for(vm)
        hosts.append(_vm_host(s, row, vm, hname, body.target, body.policy))
        audit(s, p, "create", "host", hname, platform=name, vm=vm["id"], target=body.target,
              policy=body.policy)
    return host_rows(s, hosts)
