"""The libvirt XML the source reads (domain disks) and writes (backup, checkpoint)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from ..agentless import DiskPlan

#: the storage formats on which libvirt can keep a checkpoint's dirty bitmap
CHECKPOINT_FORMATS = ("qcow2",)


@dataclass(frozen=True)
class DomDisk:
    target: str
    bus: str
    kind: str  # file, block, network, volume
    source: str
    format: str
    readonly: bool

    def unsupported(self) -> str | None:
        """Why a pull-mode backup with a checkpoint cannot take this disk (None: it can)."""
        if self.kind == "network":
            return (
                f"disk {self.target} is a network disk ({self.source}): libvirt cannot keep a "
                "checkpoint on it; protect it through its storage platform instead"
            )
        if self.format not in CHECKPOINT_FORMATS:
            return (
                f"disk {self.target} is in format {self.format or 'unknown'}: libvirt checkpoints "
                "need qcow2; convert it (qemu-img convert -O qcow2) and point the domain at the copy"
            )
        return None


def disks(xml: str) -> list[DomDisk]:
    """The domain's disks (device='disk'; CD-ROMs and floppies are not protected)."""
    out = []
    for d in ET.fromstring(xml).findall("./devices/disk"):
        if d.get("device", "disk") != "disk":
            continue
        target = d.find("target")
        if target is None or not target.get("dev"):
            continue
        src = d.find("source")
        kind = d.get("type", "file")
        source = ""
        if src is not None:
            if kind == "network":
                source = f"{src.get('protocol', '')}:{src.get('name', '')}"
            elif kind == "volume":
                source = f"{src.get('pool', '')}/{src.get('volume', '')}"
            else:
                source = src.get("file") or src.get("dev") or ""
        drv = d.find("driver")
        out.append(
            DomDisk(
                target=str(target.get("dev")),
                bus=target.get("bus", ""),
                kind=kind,
                source=source,
                format=(drv.get("type", "") if drv is not None else ""),
                readonly=d.find("readonly") is not None,
            )
        )
    return out


def has_guest_agent(xml: str) -> bool:
    return any(
        t.get("name") == "org.qemu.guest_agent.0"
        for t in ET.fromstring(xml).findall("./devices/channel/target")
    )


def checkpoint_disks(xml: str) -> set[str]:
    """Disks a checkpoint keeps a bitmap for."""
    return {
        str(d.get("name"))
        for d in ET.fromstring(xml).findall("./disks/disk")
        if d.get("checkpoint", "bitmap") == "bitmap"
    }


def backup_xml(socket: str, scratch_dir: str, base: str | None, plans: list[DiskPlan]) -> str:
    """A pull-mode backup of ALL the domain's disks in one job (one instant), each
    exported over NBD as its target name, with the dirty bitmap since `base` where the
    disk is read incrementally, exported as `qemu:dirty-bitmap:<base>`."""
    parts = []
    for p in plans:
        mode = (
            f"backupmode='incremental' incremental={quoteattr(base)} exportbitmap={quoteattr(base)}"
            if p.incremental and base
            else "backupmode='full'"
        )
        parts.append(
            f"<disk name={quoteattr(p.name)} backup='yes' type='file' {mode} "
            f"exportname={quoteattr(p.name)}>"
            f"<scratch file={quoteattr(f'{scratch_dir}/{p.name}.scratch.qcow2')}/></disk>"
        )
    return (
        f"<domainbackup mode='pull'><server transport='unix' socket={quoteattr(socket)}/>"
        f"<disks>{''.join(parts)}</disks></domainbackup>"
    )


def checkpoint_xml(name: str, targets: list[str]) -> str:
    body = "".join(f"<disk name={quoteattr(t)} checkpoint='bitmap'/>" for t in targets)
    return (
        f"<domaincheckpoint><name>{escape(name)}</name>"
        f"<description>made by OpenBDR; removed by its next sync</description>"
        f"<disks>{body}</disks></domaincheckpoint>"
    )


def backup_paths(xml: str) -> tuple[str, list[str]]:
    """(NBD socket, scratch files) of a running backup job's XML."""
    root = ET.fromstring(xml)
    server = root.find("server")
    sock = server.get("socket", "") if server is not None else ""
    scratch = [str(s.get("file") or s.get("dev")) for s in root.findall("./disks/disk/scratch")]
    return sock, scratch
