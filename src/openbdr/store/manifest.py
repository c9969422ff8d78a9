"""Restore point manifests: `points/<host>/<point>.json`, written last = the commit."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import blake3

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


def _checksum(raw: dict[str, Any]) -> str:
    """BLAKE3 of the record without its checksum, as canonical JSON: a flipped byte that
    leaves valid JSON (a size, an index digest) is damage, not a different point."""
    body = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    return blake3.blake3(body).hexdigest()


#: the newest manifest format this code reads
FORMAT = 1
NEWER = "newer than this OpenBDR reads"


def _fields(cls: type, raw: object, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The dataclass's fields from a JSON object, type-checked against their defaults or
    annotations; unknown keys (a newer release's) dropped."""
    if not isinstance(raw, dict):
        raise ValueError(f"{cls.__name__}: not a JSON object")
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"{cls.__name__}: no {f.name!r}")
            continue
        value = raw[f.name]
        want = _TYPES.get(str(f.type))
        if want is not None and (
            not isinstance(value, want) or (isinstance(value, bool) and bool not in want)
        ):
            raise ValueError(f"{cls.__name__}.{f.name} is {type(value).__name__}")
        out[f.name] = value
    return out


_NONE = type(None)
#: JSON types each annotation accepts (annotations are strings: `from __future__`)
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "str": (str,),
    "float": (int, float),
    "bool": (bool,),
    "str | None": (str, _NONE),
    "dict[str, Any] | None": (dict, _NONE),
    "list[dict[str, Any]]": (list,),
    "list[str]": (list,),
}


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
    #: BLAKE3 of the disk's index object as committed: an index damaged or swapped with
    #: another point's is refused instead of restoring that point's bytes
    index_blake3: str | None = None


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
    #: Object Lock: the manifest and indexes are immutable until this date (ISO, UTC)
    locked_until: str | None = None
    #: Object Lock: no chunk of this point can be deleted before this date
    chunks_locked_until: str | None = None
    #: a copy made by `openbdr copy`: {"repository", "id", "copied"} of where it came from
    copy_of: dict[str, Any] | None = None
    #: how the source took the snapshot (`Snapshot.notes`): why the point's consistency is
    #: what it is (a guest agent froze the file systems, or not and why)
    notes: list[str] = field(default_factory=list)
    #: why the point's record cannot be read (set on a stand-in listed as `damaged`, never
    #: written): the point is shown, and anything that needs its data fails in one line
    unreadable: str | None = None

    def to_bytes(self) -> bytes:
        raw = asdict(self)
        raw.pop("unreadable")
        raw["checksum"] = _checksum(raw)
        return json.dumps(raw, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, host: str | None = None, point: str | None = None) -> RestorePoint:
        """The record, checked: shape and types, a format this code reads, and (when the
        caller knows them from where it was stored) its host and id. Fields a newer
        release added are ignored. Raises ValueError saying what is wrong."""
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError(f"not a JSON object but {type(raw).__name__}")
        fmt = raw.get("format", 1)
        if not isinstance(fmt, int) or fmt > FORMAT:
            raise ValueError(f"format version {fmt!r}: {NEWER} ({FORMAT})")
        recorded = raw.pop("checksum", None)
        if recorded is not None and recorded != _checksum(raw):
            raise ValueError("checksum mismatch (the record was altered)")
        out = cls(**_fields(cls, raw, skip={"disks", "unreadable"}), disks=[])
        disks = raw.get("disks")
        if not isinstance(disks, list):
            raise ValueError("no list of disks")
        out.disks = [DiskRecord(**_fields(DiskRecord, d)) for d in disks]
        if not all(isinstance(n, str) for n in out.notes):
            raise ValueError("notes are not all strings")
        if host is not None and out.host != host:
            raise ValueError(f"it is the record of host {out.host!r}, not {host!r}")
        if point is not None and out.id != point:
            raise ValueError(f"it is the record of point {out.id!r}, not {point!r}")
        for i, d in enumerate(out.disks):
            if d.index != i or d.size < 0 or d.block_size <= 0:
                raise ValueError(f"disk {i} is malformed")
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "id": self.id,
            "created": self.created,
            "consistency": self.consistency,
            "status": self.status,
            "disks": len(self.disks),
            "size": sum(d.size for d in self.disks),
            "stored_bytes": sum(d.stored_bytes for d in self.disks),
            # block mode: decompressed bytes the gateway wrote (0 in object mode)
            "written_bytes": sum(d.written_bytes for d in self.disks),
            "mode": ",".join(sorted({d.mode for d in self.disks})),
            "locked_until": self.locked_until,
            "copy_of": self.copy_of.get("point") if self.copy_of else None,
            "notes": list(self.notes),
        }
