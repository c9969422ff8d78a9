"""A real, private libvirtd with a running guest that writes continuously.

`libvirtd -d` and `virtlogd -d` run without systemd in a mount namespace of their own:
/run, /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are private
directories there, and the client socket lives in the test's directory
(`qemu+unix:///system?socket=…`), so tests never meet another libvirtd or each other.
Guests run under TCG where /dev/kvm cannot run them (drill/accel.py).
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..helpers import SHARED

MAKE_DISK = SHARED / "fixtures" / "make-bootable-disk"
CACHE = Path(os.environ.get("OPENBDR_TEST_CACHE", Path.home() / ".cache" / "openbdr-tests"))

LIBVIRTD_CONF = """\
unix_sock_dir = "{sock}"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:{dir}/libvirtd.log"
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "{port}"
auth_tcp = "sasl"
"""
# the TCP listener asks for a SASL user and password (DIGEST-MD5 gives libvirt's SSF)
SASL_CONF = """\
mech_list: digest-md5
sasldb_path: {dir}/sasldb
"""
SASL_USER, SASL_PASSWORD = "obuser", "right-password"
# root runs QEMU, no security driver or cgroups: nothing of the host is configured
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
"""
START = """\
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/libvirt
for d in /etc/libvirt /etc/sasl2 /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
  mkdir -p "$d" "{dir}$d"
  mount --bind "{dir}$d" "$d"
done
virtlogd -d -p {dir}/virtlogd.pid
libvirtd -d -l -f /etc/libvirt/libvirtd.conf -p {dir}/libvirtd.pid
"""


def _qemu_user() -> None:
    """libvirt's QEMU driver refuses to start without its configure-time user, which
    Debian creates only in libvirt-daemon-system (systemd units we do not use)."""
    try:
        pwd.getpwnam("libvirt-qemu")
        return
    except KeyError:
        pass
    try:
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        subprocess.run(["groupadd", "-r", "libvirt-qemu"], check=True)
    subprocess.run(
        [
            "useradd",
            "-r",
            "-g",
            "libvirt-qemu",
            "-d",
            "/var/lib/libvirt",
            "-s",
            "/usr/sbin/nologin",
            "libvirt-qemu",
        ],
        check=True,
    )


class Libvirtd:
    def __init__(self, root: Path) -> None:
        self.dir = root
        self.sock = root / "sock" / "libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.sock}"
        self.ro_uri = f"qemu+unix:///system?socket={self.sock}-ro"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.tcp_uri = f"qemu+tcp://127.0.0.1:{self.port}/system"

    def start(self) -> None:
        for d in ("sock", "etc/libvirt", "etc/sasl2"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        (self.dir / "etc/libvirt/libvirtd.conf").write_text(
            LIBVIRTD_CONF.format(sock=self.sock.parent, dir=self.dir, port=self.port)
        )
        (self.dir / "etc/sasl2/libvirt.conf").write_text(SASL_CONF.format(dir=self.dir))
        subprocess.run(
            ["saslpasswd2", "-p", "-c", "-a", "libvirt", "-f", str(self.dir / "sasldb"), SASL_USER],
            input=SASL_PASSWORD,
            text=True,
            check=True,
        )
        (self.dir / "etc/libvirt/qemu.conf").write_text(QEMU_CONF)
        _qemu_user()
        subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                START.format(dir=self.dir),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if time.monotonic() > deadline:
                log = (self.dir / "libvirtd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"libvirtd did not start:\n{log}")
            time.sleep(0.1)

    def connect(self) -> Any:
        import libvirt

        return libvirt.open(self.uri)

    def stop(self) -> None:
        try:
            conn = self.connect()
            for dom in conn.listAllDomains(0):
                if dom.isActive():
                    dom.destroy()
            conn.close()
        except Exception:
            pass
        for name in ("libvirtd", "virtlogd"):
            pidfile = self.dir / f"{name}.pid"
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Libvirtd]:
    for tool in ("libvirtd", "saslpasswd2"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup")
    d = Libvirtd(Path(tempfile.mkdtemp(prefix="obl-", dir="/tmp")))
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def boot_image() -> Path:
    """The bootable fixture disk, built once into a cache directory (raw, 256 MiB)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    img = CACHE / "libvirt-boot-256M.img"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not img.exists():
            proc = subprocess.run(
                [str(MAKE_DISK), str(img), "--size", "256M", "--marker", "libvirt-guest"],
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, proc.stderr[-2000:]
    return img


class Console:
    """The guest's serial console (a unix socket QEMU listens on): a root shell."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.out = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.out += data

    def wait_for(self, text: str, timeout: float = 180.0, start: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                at = self.out.find(text.encode(), start)
            if at >= 0:
                return at + len(text)
            time.sleep(0.2)
        raise TimeoutError(f"guest console never showed {text!r}: {bytes(self.out[-1500:])!r}")

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Run a shell command in the guest; its output (between markers that the
        terminal's echo of the typed line cannot contain)."""
        tag = f"obt{time.monotonic_ns()}"
        with self._lock:
            start = len(self.out)
        self.sock.sendall(
            f"printf '%s-%s\\n' {tag} B\n{command}\nprintf '%s-%s\\n' {tag} E\n".encode()
        )
        end = self.wait_for(f"{tag}-E\r", timeout, start)
        text = bytes(self.out[start:end]).decode(errors="replace")
        return text.split(f"{tag}-B", 1)[-1].rsplit(f"{tag}-E", 1)[0]

    def close(self) -> None:
        self.sock.close()


# The writer: a sequence number to both disks (vda's MBR gap, then vdb), then 128 KiB of
# random data somewhere on vdb, every 0.1 s. Both numbers come from one loop turn, so in
# a point taken at one instant vda's number is vdb's or one ahead of it.
WRITER = (
    "(i=0; while :; do i=$((i+1)); "
    "printf '%016d' $i | dd of=/dev/vda bs=512 seek=64 conv=notrunc,fsync 2>/dev/null; "
    "printf '%016d' $i | dd of=/dev/vdb bs=512 seek=0 conv=notrunc,fsync 2>/dev/null; "
    "dd if=/dev/urandom of=/dev/vdb bs=64k count=2 seek=$((16 + (i * 37) % 900)) "
    "conv=notrunc,fsync 2>/dev/null; sleep 0.1; done) >/dev/null 2>&1 &"
)
SEQ_OFFSETS = {"vda": 64 * 512, "vdb": 0}


def domain_xml(
    name: str, disks: list[tuple[str, Path, str]], serial: Path | None, accel: str
) -> str:
    devs = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{path}'/><target dev='{dev}' bus='virtio'/></disk>"
        for dev, path, fmt in disks
    )
    if serial is not None:
        devs += (
            f"<serial type='unix'><source mode='bind' path='{serial}'/><target port='0'/></serial>"
            "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        )
    cpu = "<cpu mode='host-passthrough'/>" if accel == "kvm" else ""
    return (
        f"<domain type='{accel}'><name>{name}</name><memory unit='MiB'>256</memory>"
        f"<vcpu>1</vcpu>{cpu}<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
        "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
        f"{devs}<video><model type='none'/></video><memballoon model='none'/></devices></domain>"
    )


def domain_type() -> str:
    """`kvm` only where KVM really runs guests (the drills' probe), else `qemu` (TCG).
    A nested PVM /dev/kvm runs the probe's boot sector but not a BIOS guest (see the
    fixture's README): TCG there, whatever the probe says."""
    from openbdr.drill.accel import choose_accel

    if os.path.isdir("/sys/module/kvm_pvm"):
        return "qemu"
    return "kvm" if choose_accel().name == "kvm" else "qemu"


class Guest:
    def __init__(self, lv: Libvirtd, workdir: Path, boot_image: Path, name: str) -> None:
        self.lv = lv
        self.name = name
        self.dir = workdir
        self.vda = workdir / "vda.qcow2"
        self.vdb = workdir / "vdb.qcow2"
        subprocess.run(
            ["qemu-img", "convert", "-O", "qcow2", str(boot_image), str(self.vda)], check=True
        )
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(self.vdb), "64M"], check=True
        )
        self.serial = workdir / "serial.sock"
        self.conn = lv.connect()
        xml = domain_xml(
            name,
            [("vda", self.vda, "qcow2"), ("vdb", self.vdb, "qcow2")],
            self.serial,
            domain_type(),
        )
        self.dom = self.conn.defineXML(xml)
        self.dom.create()
        self.console = Console(self.serial)
        self.console.wait_for("OPENBDR-GUEST-READY", timeout=300)
        time.sleep(1)

    def start_writer(self) -> None:
        self.console.run(WRITER)
        self.console.run("sleep 1")

    def seq(self, disk: str) -> int:
        """The guest's current sequence number on `disk`, read in the guest."""
        out = self.console.run(
            f"echo SEQ=$(dd if=/dev/{disk} bs=512 skip={SEQ_OFFSETS[disk] // 512} count=1 "
            "2>/dev/null | head -c 16)=QES"
        )
        found = re.findall(r"SEQ=(\d{16})=QES", out)
        assert found, out
        return int(found[-1])

    def close(self) -> None:
        self.console.close()
        try:
            if self.dom.isActive():
                self.dom.destroy()
            self.dom.undefineFlags(0x10 | 0x2)  # with checkpoint and snapshot metadata
        except Exception:
            pass
        self.conn.close()


def sync_point(repo: str, host: Any, **options: Any) -> Any:
    """One sync of `host` into the target at `repo`; the restore point."""
    from openbdr.store.target import open_target
    from openbdr.sync import SyncOptions, sync

    return sync(open_target(repo), host, SyncOptions(**options))
