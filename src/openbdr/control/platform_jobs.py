"""Job kinds `platform-test` and `platform-discover`: they run where the platform is
reachable (a sync proxy of its pool, or the server's embedded workers) and the API waits
for them. A platform that refuses is an answer, not a failed job: the result says
`ok: false` with the error line, so that no job-failure alert opens for a wrong password
typed into a form; the catalog keeps the last test's outcome and the last discovery."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ..capture.platform import open_platform
from ..errors import OpenBDRError
from .models import Job, Platform, utcnow
from .registry import JobKind, register_kind
from .worker import JobContext

TEST = "platform-test"
DISCOVER = "platform-discover"


def _refusal(exc: OpenBDRError) -> dict[str, Any]:
    return {"ok": False, "error": exc.what, "hint": exc.hint,
            "error_types": [c.__name__ for c in type(exc).__mro__ if issubclass(c, OpenBDRError)]}


def _connect(ctx: JobContext) -> Any:
    p = ctx.spec.platform
    if not p:
        raise OpenBDRError(f"{ctx.spec.kind} job {ctx.spec.id} names no platform (or it was "
                           "removed)", "start it with POST /api/v1/platforms/{name}/"
                           + ctx.spec.kind.removeprefix("platform-"))
    ctx.log(f"{ctx.spec.kind} of {p['type']} platform {p['name']} at {p['endpoint']}")
    return open_platform(p["type"], p["endpoint"], p.get("credentials") or {},
                         p.get("options") or {})


def run_test(ctx: JobContext) -> dict[str, Any]:
    try:
        platform = _connect(ctx)
        try:
            message = platform.test()
        finally:
            platform.close()
    except OpenBDRError as exc:
        ctx.log(str(exc), "warning")
        return _refusal(exc)
    return {"ok": True, "message": message}


def run_discover(ctx: JobContext) -> dict[str, Any]:
    try:
        platform = _connect(ctx)
        try:
            vms = platform.discover()
        finally:
            platform.close()
    except OpenBDRError as exc:
        ctx.log(str(exc), "warning")
        return _refusal(exc)
    ctx.log(f"found {len(vms)} VM(s)")
    return {"ok": True, "vms": [vm.to_json() for vm in vms]}


def _platform(s: Session, job: Job) -> Platform | None:
    pid = (job.params or {}).get("platform_id")
    return s.get(Platform, pid) if isinstance(pid, int) else None


def test_done(s: Session, job: Job, result: dict[str, Any]) -> None:
    p = _platform(s, job)
    if p is not None:
        p.last_test = utcnow()
        p.last_test_ok = bool(result.get("ok"))
        p.last_test_message = str(result.get("message") or result.get("error") or "")[:4000]


def discover_done(s: Session, job: Job, result: dict[str, Any]) -> None:
    p = _platform(s, job)
    if p is not None and result.get("ok"):
        p.last_discovery = utcnow()
        p.vms = list(result.get("vms") or [])
        # the platform row keeps the list; the job only its size (thousands of VMs)
        job.result = {"ok": True, "vm_count": len(p.vms)}


register_kind(JobKind(TEST, run_test, needs_host=False, on_success=test_done,
                      description="reach a platform and check its credentials"))
register_kind(JobKind(DISCOVER, run_discover, needs_host=False, on_success=discover_done,
                      description="list a platform's VMs with their disks"))
