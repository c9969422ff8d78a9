"""Restore point manifests: `points/<host>/<point>.json`, written last = the commit."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import OpenBDRError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_host_name(name: str) -> str:
    if not _NAME.match(name):
        raise OpenBDRError(
            f"invalid host name {name!r}",
            "use letters, digits, '.', '_' and '-' (up to 128, starting with a letter or digit)",
        )
    return name


def new_point_id(after: str | None = None, now: datetime | None = None) -> str:
    """Sortable by time, `20261125T060102.123456Z-3f9a1c`, and always after `after`.

    Order of ids is the order of points (`latest` is the last id), so a clock that steps
    back or two points in one microsecond must not reorder them.
    """
    now = now or datetime.now(UTC)
    if after:
        try:
            prev = datetime.strptime(after.split("-")[0], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
        except ValueError:
            prev = None
        if prev is not None and now <= prev:
            now = prev + timedelta(microseconds=1)
    return now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(3)


@dataclass
class DiskRecord:
    index: int
    name: str
    size: int
    source: str
    index_key: str
    block_size: int
    #: bytes that the layout (or platform) reported as valid data
    valid_bytes: int = 0
    #: bytes read from the source in this sync
    read_bytes: int = 0
    #: bytes of read blocks that were all zero
    zero_bytes: int = 0
    #: bytes of new chunk objects written (after compression); block mode: bytes on the wire
    stored_bytes: int = 0
    #: block mode: bytes the gateway wrote into the volume (decompressed); 0 in object mode
    written_bytes: int = 0
    new_chunks: int = 0
    #: blocks whose content matched what the repository already held
    reused_blocks: int = 0
    mode: str = "full"
    fallback_reason: str | None = None
    layout: dict[str, Any] | None = None


@dataclass
class RestorePoint:
    host: str
    id: str
    created: str
    consistency: str
    disks: list[DiskRecord]
    status: str = "ok"
    parent: str | None = None
    token: dict[str, Any] | None = None
    source: str = ""
    codec: str = "none"
    duration_s: float = 0.0
    protected: bool = False
    damaged: list[dict[str, Any]] = field(default_factory=list)
    format: int = 1
    #: when the last passed drill proved this point (status "verified"); None if never
    verified_at: str | None = None
    #: the last drill of this point: {"id", "verdict", "finished"} (drill/ reports)
    drill: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RestorePoint:
        raw = json.loads(data)
        raw["disks"] = [DiskRecord(**d) for d in raw["disks"]]
        return cls(**raw)

    def summary(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "point": self.id,
            "created": self.created,
            "consistency": self.consistency,
            "status": self.status,
            "disks": len(self.disks),
            "size": sum(d.size for d in self.disks),
            "stored_bytes": sum(d.stored_bytes for d in self.disks),
            "mode": ",".join(sorted({d.mode for d in self.disks})),
        }
