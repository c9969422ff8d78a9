"""The agent picks its source from the configuration and what the machine has."""

from __future__ import annotations

from pathlib import Path

import pytest

from openbdr.agent.config import (
    ConfigError,
    credential_path,
    is_credential,
    load,
    remove_disk,
    running_configs,
)
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


def test_control_table_and_where_enrol_writes_the_credential(tmp_path: Path) -> None:
    disk = '[[disk]]\ndevice = "/dev/sda"\n'
    plain = _cfg(tmp_path, disk)
    assert load(plain).control is None and not is_credential(plain)
    # no [control] yet: enrol writes to the default place in the state directory
    assert credential_path(plain) == Path("/tmp/s/control.json")
    linked = _cfg(tmp_path, '[control]\ncredential = "/etc/x/cred.json"\nworkers = 2\n' + disk)
    link = load(linked).control
    assert link is not None and (link.credential, link.workers, link.poll) == (
        Path("/etc/x/cred.json"), 2, 2.0)
    assert credential_path(linked) == Path("/etc/x/cred.json")
    # a proxy's JSON credential (as before `agent run` read configurations) stays itself
    cred = tmp_path / "proxy.json"
    cred.write_text('{"server": "http://x", "credential": "s"}')
    assert is_credential(cred) and credential_path(cred) == cred
    assert is_credential(tmp_path / "new.json")
    assert credential_path(tmp_path / "new.json") == tmp_path / "new.json"
    with pytest.raises(ConfigError, match="not found"):
        credential_path(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"\[control\] takes only"):
        load(_cfg(tmp_path, '[control]\nserver = "http://x"\n' + disk))


def test_remove_disk_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(
        'host = "h1"\nrepo = "/r"\n# disks below\n'
        '[[disk]]\ndevice = "/dev/a"\n\n'  # unnamed: disk0
        '[[disk]]\nname = "logs"\ndevice = "/dev/b"\nfreeze = false\n\n'
        '[control]\ncredential = "/c.json"\n'
    )
    p.chmod(0o640)
    remove_disk(p, "logs")
    cfg = load(p)
    assert [d.name for d in cfg.disks] == ["disk0"]
    assert cfg.control is not None and "# disks below" in p.read_text()
    assert p.stat().st_mode & 0o777 == 0o640
    with pytest.raises(ConfigError, match="no \\[\\[disk\\]\\] named 'logs'"):
        remove_disk(p, "logs")
    remove_disk(p, "disk0")
    assert "[[disk]]" not in p.read_text() and "[control]" in p.read_text()


def test_clients_find_the_one_running_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:  # fmt: skip
    import json
    import os

    monkeypatch.setenv("OPENBDR_RUN_DIR", str(tmp_path))
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "1.json").write_text(json.dumps({"pid": 2**22 + 7, "config": "/x"}))
    assert running_configs() == []  # a killed daemon's stale record
    (tmp_path / "agents" / f"{os.getpid()}.json").write_text(
        json.dumps({"pid": os.getpid(), "config": "/etc/a.toml"})
    )
    assert running_configs() == [Path("/etc/a.toml")]
