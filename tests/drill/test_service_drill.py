"""Service drills: PostgreSQL captured under write load, started from the repository in a netns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import loop_device, make_ext4, mounted, openbdr, run
from .leaks import leaked, snapshot

pytestmark = [pytest.mark.root, pytest.mark.slow]

PG = Path("/usr/lib/postgresql/15/bin")

PLAN = """
[drill]
kind = "service"
timeout = 180

[service]
type = "postgresql"
data_dir = "pgdata"
port = 5432

[[probe]]
type = "sql"
name = "fixed rows"
port = 5432
query = "select count(*), sum(v) from fixed"
expect = "1000|500500"
timeout = 60

[[probe]]
type = "sql"
name = "load table readable"
port = 5432
query = "select count(*) > 0 from load"
expect = "t"

[[probe]]
type = "file"
name = "control file"
path = "pgdata/global/pg_control"
"""


def _as_pg(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return run(["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", *cmd], **kw)


@pytest.fixture(scope="module")
def pg_image() -> Iterator[Path]:
    """An ext4 volume holding a PostgreSQL cluster, copied while frozen under write load."""
    if not (PG / "pg_ctl").exists():
        pytest.fail("PostgreSQL 15 is missing: run scripts/setup")
    d = Path(tempfile.mkdtemp(prefix="openbdr-pgtest-"))  # the postgres user must reach it
    os.chmod(d, 0o755)
    try:
        yield from _capture(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _capture(d: Path) -> Iterator[Path]:
    live = make_ext4(d / "live.img", 320)
    copy = d / "crash.img"
    sock = d / "sock"
    sock.mkdir()
    shutil.chown(sock, "postgres", "postgres")
    with loop_device(live) as dev, mounted(dev, d / "mnt") as mnt:
        data = mnt / "pgdata"
        data.mkdir()
        shutil.chown(data, "postgres", "postgres")
        _as_pg([str(PG / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"])
        env = {"PGHOST": str(sock), "PGPORT": "5491", "PATH": "/usr/bin:/bin"}
        _as_pg(
            [
                str(PG / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(sock / "live.log"),
                "-o",
                f"-c listen_addresses='' -c unix_socket_directories={sock} -c port=5491",
                "start",
            ]
        )
        load = None
        try:
            psql = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-c"]
            _as_pg(
                [
                    *psql,
                    "create table fixed as select g as v from generate_series(1,1000) g;"
                    " create table load (id bigserial primary key, pad text);"
                    " create index on load (pad); checkpoint;",
                ],
                env=env,
            )
            load = subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--clear-groups",
                    "psql",
                    "-X",
                    "-q",
                    "-U",
                    "postgres",
                    "-c",
                    # bounded (150,000 rows): a time-bounded load filled the volume on a
                    # fast machine, and recovery then had no room for its WAL
                    "do $$ begin for i in 1..3000 loop insert into load (pad) "
                    "select md5(g::text) from generate_series(1,50) g; commit; end loop; end $$;",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_for_rows(env, LOAD_ROWS_BEFORE_FREEZE)  # since the checkpoint: WAL only
            run(["fsfreeze", "-f", str(mnt)])
            try:
                run(["cp", "--sparse=always", str(live), str(copy)])
            finally:
                run(["fsfreeze", "-u", str(mnt)])
        finally:
            if load is not None:
                load.kill()
                load.wait()
            subprocess.run(
                [
                    "setpriv",
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--clear-groups",
                    str(PG / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
            )
            _unmount_when_idle(mnt)
    yield copy


#: committed rows of the load when the volume is frozen (the load goes on to 150,000)
LOAD_ROWS_BEFORE_FREEZE = 20_000


def _wait_for_rows(env: dict[str, str], rows: int) -> None:
    """Until the load has committed `rows` rows: the copy is then taken mid-load, whatever
    the machine's speed."""
    deadline = time.monotonic() + 60
    query = ["psql", "-X", "-qtA", "-U", "postgres", "-c", "select count(*) from load"]
    while int(_as_pg(query, env=env).stdout.strip() or 0) < rows:
        assert time.monotonic() < deadline, f"the load did not commit {rows} rows in 60 s"
        time.sleep(0.2)


def _unmount_when_idle(mnt: Path) -> None:
    """PostgreSQL's backends may still be exiting: retry until the volume lets go."""
    deadline = time.monotonic() + 30
    while subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, f"{mnt} stays busy"
        time.sleep(0.2)


@pytest.fixture
def env(state_dir: Path) -> Iterator[dict[str, str]]:
    before = snapshot(os.environ["TMPDIR"])
    yield {**os.environ, "OPENBDR_STATE_DIR": str(state_dir)}
    assert leaked(before, snapshot(os.environ["TMPDIR"])) == {}


def _drill(tmp_path: Path, img: Path, host: str, env: dict[str, str]) -> tuple[int, dict]:
    repo = str(tmp_path / "repo")
    openbdr("repo", "init", repo)
    openbdr("sync", "--all-data", "--repo", repo, "--host", host, str(img))
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    proc = openbdr(
        "drill",
        "run",
        "--repo",
        repo,
        "--host",
        host,
        "--plan",
        str(plan),
        "--json",
        check=False,
        env=env,
        timeout=600,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_postgres_recovers_from_a_crash_consistent_point(
    pg_image: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    rc, rep = _drill(tmp_path, pg_image, "db1", env)
    assert rep["verdict"] == "passed", json.dumps(rep, indent=1)
    assert rc == 0
    probes = {p["name"]: p for p in rep["probes"]}
    assert probes["pg_amcheck"]["ok"]
    assert probes["fixed rows"]["ok"] and probes["load table readable"]["ok"]
    assert "redo" in rep["service_log_tail"]  # it ran crash recovery


def test_postgres_volume_without_wal_fails_for_that_reason(
    pg_image: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    img = tmp_path / "nowal.img"
    run(["cp", "--sparse=always", str(pg_image), str(img)])
    with loop_device(img) as dev, mounted(dev, tmp_path / "m") as mnt:
        for f in (mnt / "pgdata" / "pg_wal").iterdir():
            if f.is_file():
                f.unlink()
    rc, rep = _drill(tmp_path, img, "db2", env)
    assert rc == 3  # a point that failed its drill: damaged as it is (docs/errors.md)
    assert rep["verdict"] == "failed"
    assert "PostgreSQL did not start" in rep["reason"]
    assert "checkpoint" in rep["reason"], rep["reason"]
