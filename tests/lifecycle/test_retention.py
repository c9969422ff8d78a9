"""Retention: a property test over random timelines, and `forget`/`protect` end to end."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from openbdr.store.manifest import RestorePoint
from openbdr.store.retention import Policy, decide

from ..helpers import openbdr, sha256

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _point(i: int, minutes: int, protected: bool) -> RestorePoint:
    t = T0 + timedelta(minutes=minutes)
    return RestorePoint(
        host="h", id=f"p{i:04d}", created=t.isoformat(timespec="seconds"),
        consistency="crash", disks=[], protected=protected,
    )


def _expected(points: list[RestorePoint], policy: Policy) -> set[str]:
    """The policy's words, computed the plain way: bucket, sort buckets, take newest."""
    when = {p.id: datetime.fromisoformat(p.created) for p in points}
    order = sorted(points, key=lambda p: (when[p.id], p.id), reverse=True)
    keep = {p.id for p in order[: policy.last]} | {p.id for p in points if p.protected}
    keys = {
        "hourly": lambda t: (t.year, t.month, t.day, t.hour),
        "daily": lambda t: (t.year, t.month, t.day),
        "weekly": lambda t: tuple(t.isocalendar()[:2]),
        "monthly": lambda t: (t.year, t.month),
    }
    for rule, key in keys.items():
        groups: dict[tuple[int, ...], list[RestorePoint]] = defaultdict(list)
        for p in points:
            groups[key(when[p.id])].append(p)
        for k in sorted(groups, reverse=True)[: getattr(policy, rule)]:
            keep.add(max(groups[k], key=lambda p: (when[p.id], p.id)).id)
    return keep


timelines = st.lists(
    st.tuples(st.integers(0, 60 * 24 * 200), st.booleans()),
    min_size=0, max_size=60,
)
policies = st.builds(
    Policy, *(st.integers(0, 6) for _ in range(5))
).filter(lambda p: any((p.last, p.hourly, p.daily, p.weekly, p.monthly)))


@settings(max_examples=400, deadline=None)
@given(timelines, policies)
def test_exactly_the_named_points_are_kept(raw: list[tuple[int, bool]], policy: Policy) -> None:
    points = [_point(i, m, prot) for i, (m, prot) in enumerate(raw)]
    decisions = decide(points, policy)
    kept = {d.point.id for d in decisions if d.keep}
    assert kept == _expected(points, policy)
    assert len(decisions) == len(points)
    if points:  # a non-empty policy always keeps the newest point (a sync's parent)
        newest = max(points, key=lambda p: (p.created, p.id))
        assert newest.id in kept


def test_forget_and_protect_cli(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    shas = []
    for i in range(4):
        image.write_bytes(os.urandom(1 << 20) + bytes([i]) * 1000)
        shas.append(sha256(image))
        openbdr("sync", "-r", repo, "-H", "h", "--all-data", str(image))
    pts = [p["id"] for p in json.loads(openbdr("points", "-r", repo, "--json").stdout)]
    openbdr("protect", "-r", repo, "-H", "h", "-p", pts[0])
    dry = json.loads(openbdr("forget", "-r", repo, "--keep-last", "1", "--dry-run", "--json").stdout)
    assert {r["id"] for r in dry["points"] if r["keep"]} == {pts[0], pts[3]}
    assert len(json.loads(openbdr("points", "-r", repo, "--json").stdout)) == 4  # dry run
    openbdr("forget", "-r", repo, "--keep-last", "1")
    left = [p["id"] for p in json.loads(openbdr("points", "-r", repo, "--json").stdout)]
    assert left == [pts[0], pts[3]]
    assert not list((tmp_path / "repo" / "indexes").glob(f"{pts[1]}/*"))
    proc = openbdr("forget", "-r", repo, check=False)
    assert proc.returncode != 0 and "no --keep-* option" in proc.stderr
    openbdr("gc", "-r", repo, "--margin", "0")
    for pid, sha in ((pts[0], shas[0]), (pts[3], shas[3])):
        out = tmp_path / f"{pid}.img"
        openbdr("restore", "-r", repo, "-H", "h", "-p", pid, "--to", str(out))
        assert sha256(out) == sha
    openbdr("verify", "-r", repo, "--deep")
