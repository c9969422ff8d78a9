"""The `drill` job kind: a worker runs a real drill; the server mirrors it into the catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from openbdr.control.drills import job_plan
from openbdr.control.jobs import JobSpec
from openbdr.control.models import Alert, Base, Host, Job, Point, Target, utcnow
from openbdr.control.registry import kind
from openbdr.control.worker import JobContext
from openbdr.drill.accel import boot_sector
from openbdr.drill.plan import PlanError

from ..helpers import openbdr

pytestmark = [pytest.mark.root]

TINY = {
    "drill": {"memory": 64, "network": "none"},
    "probe": [{"type": "console", "name": "sector ran", "pattern": "OK", "timeout": 120}],
}


def test_plan_comes_from_params_then_policy_then_default() -> None:
    assert job_plan({"plan": TINY}, {"drill_plan": {}}).probes[0].name == "sector ran"
    assert job_plan({}, {"drill_plan": TINY}).memory == 64
    toml = '[[probe]]\ntype = "tcp"\nport = 22\n'
    assert job_plan({"plan": toml}, {}).probes[0].port == 22
    default = job_plan({}, {"drill_plan": {}})
    assert [p.name for p in default.probes] == ["guest ready"]
    with pytest.raises(PlanError):
        job_plan({}, {"name": "gold", "drill_plan": {"probe": [{"type": "ping"}]}})


def _spec(repo: str, params: dict[str, Any]) -> JobSpec:
    return JobSpec(
        id=7,
        kind="drill",
        attempt=1,
        params=params,
        host={"name": "tiny"},
        target={"url": repo, "secrets": {}},
        policy={"name": "p", "drill_plan": {}},
        first_started=None,
        lease_ttl=30.0,
    )


def test_worker_runs_the_drill_and_the_server_records_the_verdict(
    tmp_path: Path, state_dir: Path
) -> None:
    disk = tmp_path / "tiny.img"
    with open(disk, "wb") as f:
        f.write(boot_sector())
        f.truncate(1 << 20)
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "--all-data", "--repo", repo, "--host", "tiny", str(disk))
    point_id = json.loads(openbdr("points", "--repo", repo, "--json").stdout)[0]["id"]

    k = kind("drill")
    passed = k.run(JobContext(_spec(repo, {"plan": TINY, "point": "latest"})))
    assert passed["verdict"] == "passed" and passed["point"] == point_id
    assert Path(repo, passed["report"]).exists()
    bad_plan = {**TINY, "probe": [{**TINY["probe"][0], "pattern": "NEVER", "timeout": 3}]}
    failed = k.run(JobContext(_spec(repo, {"plan": bad_plan})))
    assert failed["verdict"] == "failed"

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        target = Target(name="t", url=repo)
        s.add(target)
        s.flush()
        host = Host(name="tiny", source={"type": "image"}, target_id=target.id)
        s.add(host)
        s.flush()
        s.add(Point(host_id=host.id, point_id=point_id, created=utcnow(), consistency="crash"))
        job = Job(kind="drill", host_id=host.id)
        s.add(job)
        s.flush()
        assert k.on_success is not None
        k.on_success(s, job, passed)
        row = s.scalar(select(Point))
        assert row is not None and row.status == "verified" and row.verified is not None
        assert row.drill["drill"] == passed["drill"]
        k.on_success(s, job, failed)
        assert row.status == "ok" and row.drill["verdict"] == "failed"
        alert = s.scalar(select(Alert).where(Alert.kind == "drill_failed"))
        assert alert is not None and alert.severity == "critical" and point_id in alert.message
