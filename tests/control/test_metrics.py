"""`/metrics` counters: the bytes a host's syncs read and stored never fall, also when
retention forgets restore points (Prometheus would take the fall for a restart and count
the whole history again)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import generate_latest

from openbdr.control.db import make_engine, migrate, session_factory, transaction
from openbdr.control.metrics import Metrics
from openbdr.control.mirror import refresh_target
from openbdr.control.models import Host, Target
from openbdr.store.manifest import DiskRecord, RestorePoint

from .data import target_and_policy

MiB = 1 << 20


def _point(pid: str, read: int, stored: int) -> RestorePoint:
    disk = DiskRecord(index=0, name="disk0", size=64 * MiB, source="", index_key="",
                      block_size=MiB, read_bytes=read, stored_bytes=stored)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return RestorePoint(host="web1", id=pid, created=created, consistency="crash",
                        disks=[disk])


def _counters(metrics: Metrics) -> tuple[float, float]:
    text = generate_latest(metrics.registry).decode()
    values = {}
    for line in text.splitlines():
        for name in ("openbdr_bytes_read_total", "openbdr_bytes_stored_total"):
            if line.startswith(name + '{host="web1"}'):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["openbdr_bytes_read_total"], values["openbdr_bytes_stored_total"]


def test_byte_counters_do_not_fall_when_retention_forgets_points(
    catalog_url: str, tmp_path: Path
) -> None:
    engine = make_engine(catalog_url)
    migrate(engine)
    factory = session_factory(engine)
    metrics = Metrics(factory)
    with transaction(factory) as s:
        t, p = target_and_policy(s, tmp_path / "repo", enabled=False)  # no syncs to start
        s.add(Host(name="web1", source={"type": "image", "paths": ["/x"]}, target_id=t.id,
                   policy_id=p.id, disks=[], enabled=True))
    a, b, c = _point("a", 40 * MiB, 20 * MiB), _point("b", 6 * MiB, 2 * MiB), \
        _point("c", 5 * MiB, 1 * MiB)

    def refresh(points: list[RestorePoint]) -> dict[str, int]:
        with transaction(factory) as s:
            return refresh_target(s, s.query(Target).one(), points)

    assert refresh([a, b])["added"] == 2
    assert _counters(metrics) == (46 * MiB, 22 * MiB)
    assert refresh([a, b])["added"] == 0  # listed again: not counted again
    assert _counters(metrics) == (46 * MiB, 22 * MiB)
    assert refresh([b])["removed"] == 1  # retention forgot the full sync's point
    assert _counters(metrics) == (46 * MiB, 22 * MiB)
    refresh([b, c])
    assert _counters(metrics) == (51 * MiB, 23 * MiB)
    engine.dispose()
