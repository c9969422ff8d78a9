"""The `points` table mirrors the repositories, which stay the source of truth.

A finished sync reports its manifest (agents may reach a repository the server cannot);
a refresh re-lists a target and adds what is missing, drops what retention removed, and
keeps the unique (host, point) pair so nothing is ever listed twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..store.manifest import RestorePoint
from ..sync import disk_capture
from .models import Host, Job, Point, Target, utcnow


def _freeze_windows(capture: dict[str, Any]) -> list[float] | None:
    """The seconds of each freeze a live source (the agent) recorded; None: it froze nothing."""
    windows = capture.get("freezes")
    return [float(w["seconds"]) for w in windows] if isinstance(windows, list) else None


def point_json(p: RestorePoint) -> dict[str, Any]:
    """What a worker reports about a committed point (no chunk ids, no token; the freeze
    windows the token records are the production pause a sync cost)."""
    return {
        "host": p.host,
        "id": p.id,
        "created": p.created,
        "consistency": p.consistency,
        "status": p.status,
        "codec": p.codec,
        "duration_s": p.duration_s,
        "damaged": p.damaged,
        "notes": list(p.notes),
        "disks": [
            {
                "index": d.index,
                "name": d.name,
                "size": d.size,
                "valid_bytes": d.valid_bytes,
                "read_bytes": d.read_bytes,
                "zero_bytes": d.zero_bytes,
                "stored_bytes": d.stored_bytes,
                "mode": d.mode,
                "fallback_reason": d.fallback_reason,
                "layout": d.layout,
                "freezes_s": _freeze_windows(disk_capture(p.token, d.name)),
            }
            for d in p.disks
        ],
    }


def _created(value: str) -> datetime:
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def upsert_point(s: Session, host: Host, data: dict[str, Any], row: Point | None = None
                 ) -> Point:
    """Add or update the row of one reported point (`row`: the existing one, if the
    caller already has it)."""
    if row is None:
        row = s.scalar(select(Point).where(Point.host_id == host.id,
                                           Point.point_id == data["id"]))
    new = row is None
    if row is None:
        row = Point(host_id=host.id, point_id=data["id"])
        s.add(row)
    disks = data.get("disks", [])
    row.created = _created(data["created"])
    row.consistency = data.get("consistency", "crash")
    row.status = "damaged" if data.get("damaged") else data.get("status", "ok")
    row.size = sum(int(d.get("size", 0)) for d in disks)
    row.read_bytes = sum(int(d.get("read_bytes", 0)) for d in disks)
    row.stored_bytes = sum(int(d.get("stored_bytes", 0)) for d in disks)
    row.codec = data.get("codec", "none")
    row.mode = ",".join(sorted({str(d.get("mode", "full")) for d in disks})) or "full"
    row.duration_s = float(data.get("duration_s", 0.0))
    row.disks = disks
    row.notes = [str(n) for n in data.get("notes") or []]
    if new:  # counted once per point, and never taken back (see Host.read_bytes_total)
        host.read_bytes_total = (host.read_bytes_total or 0) + row.read_bytes
        host.stored_bytes_total = (host.stored_bytes_total or 0) + row.stored_bytes
    host.disks = [
        {"name": d["name"], "size": d["size"], "layout": d.get("layout")} for d in disks
    ]
    return row


def refresh_target(
    s: Session, target: Target, points: list[RestorePoint], listed: datetime | None = None
) -> dict[str, int]:
    """Make the table equal the repository's committed points for this target's hosts.

    Rows of hosts whose sync finished after `listed` (when the repository was listed)
    are kept: their new point may be missing from the listing only because it is newer.
    The existing rows are read in one query, not one per listed point: a target holds
    thousands of points and the scheduler refreshes it every few minutes.
    """
    listed = listed or utcnow()
    recent = set(
        s.scalars(
            select(Job.host_id).where(
                Job.kind == "sync",
                (Job.finished >= listed) | Job.state.in_(("running", "pausing", "cancelling")),
            )
        ).all()
    )
    hosts = {h.name: h for h in s.scalars(select(Host).where(Host.target_id == target.id))}
    rows = {(r.host_id, r.point_id): r for r in s.scalars(
        select(Point).where(Point.host_id.in_([h.id for h in hosts.values()])))}
    seen: set[tuple[int, str]] = set()
    added = 0
    for p in points:
        host = hosts.get(p.host)
        if host is None:
            continue
        row = rows.get((host.id, p.id))
        if row is None:
            added += 1
        rows[(host.id, p.id)] = upsert_point(s, host, point_json(p), row)
        seen.add((host.id, p.id))
    removed = 0
    for key, row in rows.items():
        if key not in seen and row.host_id not in recent:
            s.delete(row)
            removed += 1
    target.last_refresh = utcnow()
    return {"added": added, "removed": removed, "points": len(seen)}
