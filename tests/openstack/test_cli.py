"""`openbdr sync --source '{"type": "openstack", …}'`: the source type through the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ..helpers import openbdr
from .conftest import Stack, scribble
from .helpers import init_repo, spec

pytestmark = pytest.mark.s3

MIB = 1 << 20


def test_cli_sync_and_one_line_errors(fresh: Stack, tmp_path: Path) -> None:
    rng = random.Random(21)
    vol = fresh.cloud.add_volume("v", 1, fresh.project)
    scribble(fresh.cloud, vol.id, rng, 5, 32 * MIB)
    server = fresh.cloud.add_server("cli1", fresh.project, fresh.user.id, [vol])
    repo = str(init_repo(tmp_path / "repo"))
    src = spec(fresh, server)
    for _ in range(2):
        openbdr("sync", "-r", repo, "-H", "cli1", "--source", json.dumps(src), "--json")
    points = json.loads(openbdr("points", "-r", repo, "--json").stdout)
    assert len(points) == 2

    src["platform"]["options"]["ceph_keyring"] = str(tmp_path / "missing.keyring")
    src["platform"]["options"]["ceph_timeout"] = 5
    proc = openbdr("sync", "-r", repo, "-H", "cli1", "--source", json.dumps(src), check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "client.openbdr" in lines[0], proc.stderr
