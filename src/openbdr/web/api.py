"""Drill reports for the console, read from the repositories (where drills store them).

Roles are the REST API's: everything here only reads, so a viewer may call it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..control.apierrors import RESPONSES, ApiError, not_found
from ..control.auth import DB, Viewer, services
from ..control.models import Host, Target
from ..control.routes_catalog import host_by_name
from ..control.services import Services
from ..control.worker import open_target
from ..drill.report import ReportNotFound, get_artifact, list_reports, load_report
from ..errors import OpenBDRError
from ..store import target as store

router = APIRouter(prefix="/api/v1/console", responses=RESPONSES, include_in_schema=False)
Svc = Annotated[Services, Depends(services)]
#: drill ids as the drill package makes them; never a path component like `..`
DrillId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
ARTIFACTS = {"report.html": "text/html; charset=utf-8", "report.json": "application/json",
             "screenshot.png": "image/png"}


def _target_of(s: Session, svc: Services, host: Host) -> store.Target:
    t = s.get(Target, host.target_id)
    if t is None:
        raise not_found(f"target of host {host.name!r}")
    try:
        return open_target(t.url, svc.box.open(t.secrets))
    except OpenBDRError as exc:
        raise ApiError(400, "bad_request", f"cannot open repository {t.name!r}: {exc.what}",
                       exc.hint) from None


def _summary(rep: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "host", "point", "plan", "kind", "started", "finished", "verdict", "reason",
            "rto_first_s", "rto_all_s", "duration_s", "screenshot", "accel")
    return {k: rep.get(k) for k in keep}


@router.get("/drills")
def drills(
    s: DB, _p: Viewer, svc: Svc,
    host: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Drill reports stored in the repositories, newest first."""
    hosts = [host_by_name(s, host)] if host else list(s.scalars(select(Host)))
    by_target: dict[int, list[Host]] = {}
    for h in hosts:
        by_target.setdefault(h.target_id, []).append(h)
    out: list[dict[str, Any]] = []
    for members in by_target.values():
        names = {h.name for h in members}
        repo = _target_of(s, svc, members[0])
        try:
            found = [hd for hd in list_reports(repo, host) if hd[0] in names]
            for name, d in sorted(found, key=lambda hd: hd[1], reverse=True)[:limit]:
                try:
                    out.append(_summary(load_report(repo, name, d).to_json()))
                except (ReportNotFound, ValueError):
                    continue  # a report being written, or damaged: skip it
        finally:
            repo.close()
    out.sort(key=lambda r: str(r.get("started") or r["id"]), reverse=True)
    return out[:limit]


@router.get("/drills/{host}/{drill_id}")
def drill_report(host: str, drill_id: DrillId, s: DB, _p: Viewer, svc: Svc) -> dict[str, Any]:
    h = host_by_name(s, host)
    repo = _target_of(s, svc, h)
    try:
        return load_report(repo, h.name, drill_id).to_json()
    except ReportNotFound:
        raise not_found(f"drill report {drill_id!r} of host {host!r}") from None
    finally:
        repo.close()


@router.get("/drills/{host}/{drill_id}/{artifact}")
def drill_artifact(
    host: str, drill_id: DrillId, artifact: str, s: DB, _p: Viewer, svc: Svc,
    download: bool = False,
) -> Response:
    """The report page, its JSON or the console screenshot, as stored by the drill."""
    if artifact not in ARTIFACTS:
        raise not_found(f"drill artifact {artifact!r}", f"use one of {', '.join(ARTIFACTS)}")
    h = host_by_name(s, host)
    repo = _target_of(s, svc, h)
    try:
        data = get_artifact(repo, h.name, drill_id, artifact)
    except ReportNotFound:
        raise not_found(f"{artifact} of drill {drill_id!r} of host {host!r}") from None
    finally:
        repo.close()
    headers = {"Cache-Control": "private, max-age=300"}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="drill-{host}-{drill_id}-{artifact}"'
    return Response(data, media_type=ARTIFACTS[artifact], headers=headers)
