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
        fresh.cloud.requests.clear()
        openbdr("sync", "-r", repo, "-H", "cli1", "--source", json.dumps(src), "--json")
    points = json.loads(openbdr("points", "-r", repo, "--json").stdout)
    assert len(points) == 2
    # the incremental's round trips: the server, its attachments and its volume read once
    # (not again for the sync after finding the instance), the base snapshot looked up
    # once for the plan and the RBD diff
    gets = [p for m, p in fresh.cloud.requests if m == "GET"]
    assert gets.count(f"/compute/v2.1/servers/{server.id}") == 1, gets
    assert gets.count(f"/compute/v2.1/servers/{server.id}/os-volume_attachments") == 1, gets
    assert sum(p.endswith(f"/volumes/{vol.id}") for p in gets) == 1, gets
    named = [p for p in gets if p.endswith("/snapshots/detail")]
    assert len(named) == 4, gets  # base by name, ours; after the commit: ours, the old by name

    src["platform"]["options"]["ceph_keyring"] = str(tmp_path / "missing.keyring")
    src["platform"]["options"]["ceph_timeout"] = 5
    proc = openbdr("sync", "-r", repo, "-H", "cli1", "--source", json.dumps(src), check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "client.openbdr" in lines[0], proc.stderr


def test_sync_of_openstack_imports_no_other_platform(tmp_path: Path) -> None:
    """Opening an `openstack` source loads its own module, not boto3 through `aws`'s."""
    import subprocess
    import sys

    code = "\n".join([
        "import sys",
        "from openbdr.capture.registry import open_source",
        "try:",
        "    open_source('h', {'type': 'openstack'})",  # no platform: refused by its check
        "except Exception as exc:",
        "    print(type(exc).__name__)",
        "print(sorted(m for m in ('openbdr.capture.aws', 'boto3', 'openbdr.capture.libvirt',",
        "                         'openbdr.capture.openstack') if m in sys.modules))",
    ])
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.split("\n")
    assert out[:2] == ["SourceError", "['openbdr.capture.openstack']"], out
