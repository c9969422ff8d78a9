"""Chart series for the dashboard, computed from the mirrored restore points.

RPO lag at an instant is the age of a host's newest point created before it; the chart
shows the worst and the median host at evenly spaced instants. Throughput is the bytes
read and stored by the points committed in each interval, per second.
"""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..control.models import Host, Point


def _ts(dt: datetime) -> float:
    return dt.timestamp()


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
    t0 = _ts(now) - span
    instants = [t0 + step * (i + 1) for i in range(buckets)]
    # the newest point of each host before the window, and every point inside it
    before = (
        select(Point.host_id, func.max(Point.created))
        .where(Point.created < start).group_by(Point.host_id)
    )
    created: dict[int, list[float]] = defaultdict(list)
    for host_id, c in s.execute(before).all():
        created[host_id].append(_ts(c))
    read = [0.0] * buckets
    stored = [0.0] * buckets
    rows = s.execute(
        select(Point.host_id, Point.created, Point.read_bytes, Point.stored_bytes)
        .where(Point.created >= start).order_by(Point.created)
    ).all()
    for host_id, c, r, st in rows:
        t = _ts(c)
        created[host_id].append(t)
        i = min(buckets - 1, max(0, int((t - t0) // step)))
        read[i] += r or 0
        stored[i] += st or 0
    enabled = set(s.scalars(select(Host.id).where(Host.enabled.is_(True))))
    rpo_max: list[float | None] = []
    rpo_median: list[float | None] = []
    for t in instants:
        lags = []
        for host_id, times in created.items():
            if host_id not in enabled:
                continue
            k = bisect.bisect_right(times, t)
            if k:
                lags.append(t - times[k - 1])
        rpo_max.append(round(max(lags), 1) if lags else None)
        rpo_median.append(round(statistics.median(lags), 1) if lags else None)
    return {
        "t": [round(t, 3) for t in instants],
        "step_seconds": round(step, 3),
        "rpo_max": rpo_max,
        "rpo_median": rpo_median,
        "read_rate": [round(x / step, 1) for x in read],
        "stored_rate": [round(x / step, 1) for x in stored],
    }
