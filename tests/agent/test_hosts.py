"""The agent picks its source from the configuration and what the machine has."""

from __future__ import annotations

from pathlib import Path

import pytest

from openbdr.agent.config import ConfigError, load
from openbdr.agent.hosts import open_host
from openbdr.capture.linux.cowvol import CowVolHost
from openbdr.capture.linux.snapdriver import DriverHost
from openbdr.capture.linux.source import AgentHost
from openbdr.errors import SourceError

HEAD = 'host = "h1"\nrepo = "/tmp/r"\nstate_dir = "/tmp/s"\n'


def _cfg(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(HEAD + body)
    return p


def test_volumes_drivers_and_tracing(tmp_path: Path) -> None:
    vol = load(_cfg(tmp_path, '[[disk]]\nname = "v"\nvolume = "/srv/vol"\n'))
    assert isinstance(open_host(vol), CowVolHost)
    info = tmp_path / "datto-info"
    info.write_text('{"devices": []}')
    drv = load(
        _cfg(
            tmp_path,
            f'snapshot_driver = "dattobd"\n[driver]\nctl = "/bin/true"\ninfo = "{info}"\n'
            '[[disk]]\ndevice = "/dev/sda1"\ncow_dir = "/var/backup"\n',
        )
    )
    host = open_host(drv)
    assert isinstance(host, DriverHost) and host.specs[0].cow_dir == "/var/backup"
    none = load(_cfg(tmp_path, 'snapshot_driver = "none"\n[[disk]]\ndevice = "/dev/sda"\n'))
    assert isinstance(open_host(none), AgentHost)
    info.unlink()  # named but not loaded: one clear error
    with pytest.raises(SourceError, match="not available"):
        open_host(drv)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('[[disk]]\ndevice = "/dev/sda"\n[[disk]]\nvolume = "/v"\n', "one agent"),
        ('[[disk]]\ndevice = "/dev/sda"\nvolume = "/v"\n', "either `device` or `volume`"),
        ('snapshot_driver = "lvm"\n[[disk]]\ndevice = "/dev/sda"\n', "snapshot_driver"),
    ],
)
def test_bad_configurations(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(_cfg(tmp_path, body))
