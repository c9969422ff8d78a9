"""Chart series for the dashboard, computed from the mirrored restore points.

RPO lag at an instant is the age of a host's newest point created before it; the chart
shows the worst and the median host at evenly spaced instants. Throughput is the bytes
read and stored by the points committed in each interval, per second.

The database groups the points by interval, so the work grows with hosts × intervals,
not with the points: a thousand hosts at a 5-minute RPO make 288,000 points a day.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ..control.models import Host, Point


def series(s: Session, now: datetime, hours: float = 24.0, buckets: int = 48) -> dict[str, Any]:
    """{"t": [...epoch s], "rpo_max": [...], "rpo_median": [...], "read_rate": [...],
    "stored_rate": [...]}; lag is None where no host had a point yet."""
    start = now - timedelta(hours=hours)
    # a young catalog: the chart starts just before its first point, not hours earlier
    first = s.scalar(select(func.min(Point.created)))
    if first is not None and first > start:
        start = first - timedelta(minutes=1)
    span = max((now - start).total_seconds(), 60.0)
    step = span / buckets
    t0 = now.timestamp() - span
    instants = [t0 + step * (i + 1) for i in range(buckets)]
    edges = [datetime.fromtimestamp(t, UTC) for t in instants]
    # throughput: the points committed in [edge i-1, edge i), summed by the database
    # (grouped in an outer query: PostgreSQL would not match a CASE with bound parameters
    # in GROUP BY to the same CASE in the select list)
    slot = case(*[(Point.created < e, i) for i, e in enumerate(edges[:-1])], else_=buckets - 1)
    inner = select(slot.label("b"), Point.read_bytes.label("r"), Point.stored_bytes.label("st")
                   ).where(Point.created >= start).subquery()
    read = [0.0] * buckets
    stored = [0.0] * buckets
    for i, r, st in s.execute(
        select(inner.c.b, func.sum(inner.c.r), func.sum(inner.c.st)).group_by(inner.c.b)
    ):
        read[i] = float(r or 0)
        stored[i] = float(st or 0)
    # lag: each host's newest point up to each instant (none after the last one)
    upto = case(*[(Point.created <= e, i) for i, e in enumerate(edges)], else_=buckets)
    newest: dict[int, list[float | None]] = {}
    for host_id, c in s.execute(
        select(Point.host_id, func.max(Point.created)).where(Point.created < start)
        .group_by(Point.host_id)
    ):
        newest.setdefault(host_id, [None] * buckets)[0] = c.timestamp()
    inner = select(Point.host_id.label("h"), upto.label("b"), Point.created.label("c")
                   ).where(Point.created >= start).subquery()
    for host_id, i, c in s.execute(
        select(inner.c.h, inner.c.b, func.max(inner.c.c)).group_by(inner.c.h, inner.c.b)
    ):
        if i < buckets:
            row = newest.setdefault(host_id, [None] * buckets)
            row[i] = max(c.timestamp(), row[i] or 0.0)
    enabled = set(s.scalars(select(Host.id).where(Host.enabled.is_(True))))
    lags: list[list[float]] = [[] for _ in range(buckets)]
    for host_id, row in newest.items():
        if host_id not in enabled:
            continue
        last: float | None = None
        for i, when in enumerate(row):
            if when is not None:
                last = when
            if last is not None:
                lags[i].append(instants[i] - last)
    return {
        "t": [round(t, 3) for t in instants],
        "step_seconds": round(step, 3),
        "rpo_max": [round(max(x), 1) if x else None for x in lags],
        "rpo_median": [round(statistics.median(x), 1) if x else None for x in lags],
        "read_rate": [round(x / step, 1) for x in read],
        "stored_rate": [round(x / step, 1) for x in stored],
    }
