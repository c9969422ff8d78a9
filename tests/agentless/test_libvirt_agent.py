"""Quiesce through a real QEMU guest agent: the host's `qemu-ga` runs in the fixture guest.

The busybox guest has no agent of its own, so its data disk is an ext4 file system
holding the host's `qemu-ga` and the libraries it links (started through their own
dynamic loader). The sync then freezes the guest's file systems through libvirt, the
point says `filesystem` and how many were frozen, and the guest is thawed after.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbdr.capture.registry import open_source

from .conftest import Console, Libvirtd, domain_type, domain_xml, sync_point

pytestmark = [pytest.mark.root, pytest.mark.slow]

QEMU_GA = Path("/usr/sbin/qemu-ga")
START_AGENT = (
    "mkdir -p /mnt/ga && mount /dev/vdb /mnt/ga && "
    "for p in /sys/class/virtio-ports/*; do "
    '[ "$(cat $p/name)" = org.qemu.guest_agent.0 ] && dev=/dev/${p##*/}; done; '
    "/mnt/ga/ld.so --library-path /mnt/ga /mnt/ga/qemu-ga -m virtio-serial -p $dev "
    "-t /tmp -f /tmp/qga.pid -d; echo AGENT=$?"
)


def agent_disk(work: Path) -> Path:
    """An ext4 image (qcow2) with qemu-ga, its libraries and their loader."""
    root = work / "ga"
    root.mkdir()
    shutil.copy(QEMU_GA, root / "qemu-ga")
    ldd = subprocess.run(["ldd", str(QEMU_GA)], capture_output=True, text=True, check=True)
    for line in ldd.stdout.splitlines():
        parts = line.split()
        if "=>" in parts and parts[parts.index("=>") + 1].startswith("/"):
            shutil.copy(parts[parts.index("=>") + 1], root / parts[0])
        elif parts and parts[0].startswith("/") and "ld-linux" in parts[0]:
            shutil.copy(parts[0], root / "ld.so")
    raw = work / "ga.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root), str(raw), "32M"], check=True
    )
    out = work / "vdb.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out)], check=True)
    raw.unlink()
    return out


def agent_answers(dom: object, timeout: float = 120.0) -> None:
    import libvirt
    import libvirt_qemu

    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute": "guest-ping"}', 5, 0)
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture
def agent_guest(libvirtd: Libvirtd, boot_image: Path) -> Iterator[tuple[object, Console, Path]]:
    if not QEMU_GA.exists():
        pytest.fail("qemu-ga is missing: run scripts/setup (qemu-guest-agent)")
    work = Path(tempfile.mkdtemp(prefix="oba-", dir="/tmp"))
    conn = libvirtd.connect()
    dom = None
    try:
        vda = work / "vda.qcow2"
        subprocess.run(
            ["qemu-img", "convert", "-O", "qcow2", str(boot_image), str(vda)], check=True
        )
        vdb = agent_disk(work)
        serial = work / "serial.sock"
        xml = domain_xml(
            "obt-agent", [("vda", vda, "qcow2"), ("vdb", vdb, "qcow2")], serial, domain_type()
        )
        dom = conn.defineXML(xml)
        dom.create()
        console = Console(serial)
        console.wait_for("OPENBDR-GUEST-READY", timeout=300)
        time.sleep(1)
        assert "AGENT=0" in console.run(START_AGENT, timeout=120)
        agent_answers(dom)
        yield dom, console, work
        console.close()
    finally:
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(0x10 | 0x2)
            except Exception:
                pass
        conn.close()
        shutil.rmtree(work, ignore_errors=True)


def test_the_guest_agent_freezes_and_thaws_and_the_point_says_so(
    libvirtd: Libvirtd, agent_guest: tuple[object, Console, Path]
) -> None:
    from openbdr.store.target import init_target

    _dom, console, work = agent_guest
    repo = str(work / "repo")
    init_target(repo)
    spec = {
        "type": "libvirt",
        "platform": {
            "endpoint": libvirtd.uri,
            "options": {"scratch_dir": str(work / "scratch"), "quiesce": "required"},
        },
        "vm": "obt-agent",
    }
    point = sync_point(repo, open_source("kvm-agent", spec))
    assert point.consistency == "filesystem"
    # the root file system on vda and the agent's own on vdb
    assert point.notes == [
        "quiesce: the QEMU guest agent froze 2 file system(s) for the snapshot: "
        "filesystem-consistent"
    ], point.notes
    # thawed: the guest writes to both file systems again
    out = console.run("echo x > /root/after && echo x > /mnt/ga/after && echo WROTE=$?", 60)
    assert "WROTE=0" in out, out
