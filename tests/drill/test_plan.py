"""Drill plans: good plans parse; bad ones give one clear line and run nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from openbdr.drill.plan import PlanError, parse_plan

from ..helpers import openbdr


def test_a_full_plan_parses() -> None:
    plan = parse_plan(
        """
[drill]
kind = "vm"
memory = 256
network = "probes"

[[probe]]
type = "http"
port = 80
contains = "hi"

[[probe]]
type = "sql"
port = 5432
query = "select 1"
expect = "1"

[[probe]]
type = "shell"
command = "uname -a"

[[probe]]
type = "command"
command = "echo ok"
"""
    )
    assert plan.memory == 256
    assert plan.forwarded_ports == [80, 5432]
    assert [p.name for p in plan.probes] == ["http-1", "sql-2", "shell-3", "command-4"]
    assert plan.probes[2].command == ["uname -a"]
    assert plan.probes[3].command == ["/bin/sh", "-c", "echo ok"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[drill\n", "not valid TOML"),
        ('[drill]\nkind = "lxc"\n[[probe]]\ntype="tcp"\nport=1\n', "drill kind 'lxc' is unknown"),
        ('[[probe]]\ntype = "ping"\n', "type 'ping' is unknown"),
        ('[[probe]]\ntype = "http"\n', "needs `port`"),
        ('[[probe]]\ntype = "tcp"\nport = 1\ncolour = "red"\n', "unknown key(s) colour"),
        ("[drill]\nmemory = 64\n", "no [[probe]]"),
        ('[drill]\nkind = "service"\n[[probe]]\ntype = "tcp"\nport = 1\n', "[service] table"),
        (
            '[drill]\nkind="service"\n[service]\n[[probe]]\ntype="console"\npattern="x"\n',
            "console probes need a vm drill",
        ),
        ('[[probe]]\ntype = "shell"\ncommand = ["ls"]\n', "one line of text"),
    ],
)
def test_bad_plans_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(PlanError) as err:
        parse_plan(text, "p.toml")
    assert message in str(err.value)


def test_cli_refuses_a_bad_plan_in_one_line(small_repo: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = small_repo
    plan = tmp_path / "bad.toml"
    plan.write_text('[[probe]]\ntype = "ping"\n')
    proc = openbdr("drill", "run", "--repo", url, "--host", "h1", "--plan", str(plan), check=False)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "type 'ping' is unknown" in lines[0]
    missing = openbdr(
        "drill",
        "run",
        "--repo",
        url,
        "--host",
        "h1",
        "--plan",
        str(tmp_path / "nope.toml"),
        check=False,
    )
    assert missing.returncode == 1 and "cannot read drill plan" in missing.stderr
    report = openbdr("drill", "report", "--repo", url, "20990101", check=False)
    assert report.returncode == 1 and "no drill report" in report.stderr
    assert not Path(url, "drills").exists()
