"""The libvirt source's clear errors, and shut-off domains read from their images."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from openbdr.capture.agentless import is_owned
from openbdr.capture.platform import PlatformError, UnknownVM, open_platform
from openbdr.capture.registry import open_source
from openbdr.store.target import init_target
from openbdr.sync import SyncOptions, sync

from ..helpers import openbdr, sha256
from .conftest import SASL_PASSWORD, SASL_USER, Libvirtd, domain_xml, sync_point

pytestmark = [pytest.mark.root]


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="obe-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_unreachable_platform(work: Path) -> None:
    uri = f"qemu+unix:///system?socket={work}/no-such/libvirt-sock"
    with pytest.raises(PlatformError) as e:
        open_platform("libvirt", uri, {})
    assert _one_line(e.value).startswith(f"cannot reach libvirt at {uri}")
    assert "No such file or directory" in str(e.value) and "libvirtd" in str(e.value)


def test_wrong_credentials_are_refused_and_right_ones_work(libvirtd: Libvirtd) -> None:
    with pytest.raises(PlatformError) as e:
        open_platform("libvirt", libvirtd.tcp_uri, {"username": SASL_USER, "password": "nope"})
    assert "refused the credentials" in _one_line(e.value)
    assert "username and password" in str(e.value)
    p = open_platform(
        "libvirt", libvirtd.tcp_uri, {"username": SASL_USER, "password": SASL_PASSWORD}
    )
    try:
        assert p.test().startswith("libvirt 9.")
    finally:
        p.close()


def test_unknown_vm(libvirtd: Libvirtd) -> None:
    p = open_platform("libvirt", libvirtd.uri, {})
    try:
        with pytest.raises(UnknownVM) as e:
            p.open_host("h1", "no-such-vm", {})
        assert _one_line(e.value).startswith(
            f"no VM 'no-such-vm' on libvirt platform {libvirtd.uri}"
        )
        with pytest.raises(UnknownVM):
            p.vm("00000000-0000-4000-8000-000000000000")
    finally:
        p.close()
    spec = {"type": "libvirt", "platform": {"endpoint": libvirtd.uri}, "vm": "no-such-vm"}
    with pytest.raises(UnknownVM):
        open_source("h1", spec)


def _define(lv: Libvirtd, name: str, disks: list[tuple[str, Path, str]]) -> libvirt.virDomain:
    conn = lv.connect()
    return conn.defineXML(domain_xml(name, disks, None, "qemu"))


def test_a_raw_disk_cannot_be_backed_up(libvirtd: Libvirtd, work: Path) -> None:
    raw = work / "raw.img"
    raw.write_bytes(b"\0" * (16 << 20))
    dom = _define(libvirtd, "obt-raw", [("vda", raw, "raw")])
    try:
        dom.create()  # no OS: SeaBIOS finds nothing to boot; paused, it costs nothing
        dom.suspend()
        # the real limit: libvirt refuses a checkpoint on a raw disk
        with pytest.raises(libvirt.libvirtError, match="unsupported for storage type raw"):
            dom.checkpointCreateXML("<domaincheckpoint><name>probe</name></domaincheckpoint>", 0)
        p = open_platform("libvirt", libvirtd.uri, {})
        vm = p.vm("obt-raw")
        assert vm.power_state == "paused"
        assert vm.disks[0].format == "raw" and "qcow2" in (vm.disks[0].unsupported or "")
        host = p.open_host("rawhost", "obt-raw", {"scratch_dir": str(work / "scratch")})
        repo = init_target(str(work / "repo"))
        with pytest.raises(PlatformError) as e:
            sync(repo, host, SyncOptions())
        msg = _one_line(e.value)
        assert msg.startswith(f"VM obt-raw on {libvirtd.uri} cannot be backed up: disk vda")
        assert "convert it" in msg
        assert not [c for c in dom.listAllCheckpoints(0) if is_owned(c.getName(), "rawhost")]
        assert not (work / "scratch").exists() or not list((work / "scratch").iterdir())
        assert repo.points("rawhost") == []
        p.close()
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_read_only_access_is_denied_clearly(libvirtd: Libvirtd, work: Path) -> None:
    img = work / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "8M"], check=True)
    dom = _define(libvirtd, "obt-ro", [("vda", img, "qcow2")])
    try:
        dom.create()
        dom.suspend()
        p = open_platform("libvirt", libvirtd.ro_uri, {})
        assert [v.name for v in p.discover() if v.name == "obt-ro"]  # read-only may look
        host = p.open_host("rohost", "obt-ro", {"scratch_dir": str(work / "scratch")})
        with pytest.raises(PlatformError) as e:
            sync(init_target(str(work / "repo")), host, SyncOptions())
        assert "denied" in _one_line(e.value) and "read-write" in str(e.value)
        p.close()
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_a_shut_off_domain_is_read_from_its_images(
    libvirtd: Libvirtd, boot_image: Path, work: Path
) -> None:
    vda, vdb = work / "vda.qcow2", work / "vdb.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(boot_image), str(vda)], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(vdb), "32M"], check=True)
    _qemu_io(vdb, "write -P 0x5a 3M 2M")
    dom = _define(libvirtd, "obt-off", [("vda", vda, "qcow2"), ("vdb", vdb, "qcow2")])
    try:
        spec = {
            "type": "libvirt",
            "platform": {"endpoint": libvirtd.uri, "options": {"scratch_dir": str(work / "s")}},
            "vm": dom.UUIDString(),
        }
        repo = str(work / "repo")
        init_target(repo)
        # never started: no checkpoint, a full pass of the images
        first = sync_point(repo, open_source("offhost", spec))
        assert first.consistency == "crash" and [d.mode for d in first.disks] == ["full", "full"]
        assert 2 << 20 <= first.disks[1].read_bytes <= 3 << 20  # only what the image holds
        _same(repo, first.id, {"vda": vda, "vdb": vdb}, work)

        # it ran once (paused: no guest writes) and got a checkpoint, then was shut off
        dom.create()
        dom.suspend()
        ran = sync_point(repo, open_source("offhost", spec))
        assert [d.mode for d in ran.disks] == ["hash-compare", "hash-compare"]
        dom.destroy()
        _qemu_io(vdb, "write -P 0x33 10M 64k")  # written while shut off
        off = sync_point(repo, open_source("offhost", spec))
        assert [d.mode for d in off.disks] == ["incremental", "incremental"]  # the bitmap
        assert [d.read_bytes for d in off.disks] == [0, 64 << 10]  # just what was written
        assert (
            off.token["value"]["vda"]["value"]["base"] == ran.token["value"]["vda"]["value"]["base"]
        )
        _same(repo, off.id, {"vda": vda, "vdb": vdb}, work)
        # no qemu-nbd is left running on the images
        ps = subprocess.run(["pgrep", "-af", "qemu-nbd"], capture_output=True, text=True).stdout
        assert str(vda) not in ps and str(vdb) not in ps
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)


def _qemu_io(img: Path, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(img)], check=True, capture_output=True
    )


def _same(repo: str, point: str, images: dict[str, Path], work: Path) -> None:
    out = work / f"restored-{point}"
    out.mkdir()
    openbdr("restore", "--repo", repo, "--host", "offhost", "--point", point, "--to", str(out))
    for name, img in images.items():
        raw = work / f"{name}-{point}.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(img), str(raw)], check=True)
        assert sha256(out / f"{name}.img") == sha256(raw), name
