"""Retention: which restore points of a host a `--keep-*` policy keeps.

The rules are those operators know from backup tools: `last` keeps the N newest points;
`hourly`/`daily`/`weekly`/`monthly` keep the newest point of each of the N most recent
hours/days/ISO weeks/months (UTC) that have points. A point is kept if any rule names
it, or if it is protected. A non-empty policy always keeps the newest point, so a sync
running meanwhile never loses the parent it deduplicates against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..errors import OpenBDRError
from .manifest import RestorePoint
from .target import Target

BUCKETS: dict[str, Callable[[datetime], str]] = {
    "hourly": lambda t: t.strftime("%Y-%m-%dT%H"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: t.strftime("%Y-%m"),
}


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def check(self) -> Policy:
        counts = [self.last, self.hourly, self.daily, self.weekly, self.monthly]
        if any(n < 0 for n in counts):
            raise OpenBDRError("a --keep-* count is negative", "give counts of 0 or more")
        if not any(counts):
            raise OpenBDRError(
                "no --keep-* option given: forget would remove every point",
                "give at least one of --keep-last/--keep-hourly/--keep-daily/"
                "--keep-weekly/--keep-monthly",
            )
        return self


@dataclass
class Decision:
    point: RestorePoint
    reasons: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def point_time(p: RestorePoint) -> datetime:
    try:
        t = datetime.fromisoformat(p.created)
    except ValueError:
        t = datetime.strptime(p.id[:16], "%Y%m%dT%H%M%SZ")
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def decide(points: list[RestorePoint], policy: Policy) -> list[Decision]:
    """A decision per point (of one host), newest first."""
    newest_first = sorted(points, key=lambda p: (point_time(p), p.id), reverse=True)
    out = [Decision(p) for p in newest_first]
    for d in out[: policy.last]:
        d.reasons.append("last")
    for rule, bucket in BUCKETS.items():
        want = getattr(policy, rule)
        seen: set[str] = set()
        for d in out:
            if len(seen) >= want:
                break
            b = bucket(point_time(d.point))
            if b not in seen:
                seen.add(b)
                d.reasons.append(rule)
    for d in out:
        if d.point.protected:
            d.reasons.append("protected")
        if d.point.unreadable:
            d.reasons.append("damaged")  # its record cannot be read: kept for repair
    return out


def forget(
    target: Target, policy: Policy, host: str | None = None, *, dry_run: bool = False
) -> list[Decision]:
    """Apply the policy to each host (or one); the target removes what it does not keep
    (its data goes at the next gc)."""
    policy.check()
    hosts = [host] if host else target.hosts()
    decisions = [d for h in hosts for d in decide(target.points(h), policy)]
    if not dry_run:
        target.forget([d.point for d in decisions if not d.keep])
    return decisions
