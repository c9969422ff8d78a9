"""Immutable restore points: S3 Object Lock retention of everything a point needs.

The repository's config holds `object_lock: {"mode", "seconds"}` (N). A point committed at
time T is retained until T + N: its manifest and indexes are written with that
retain-until date (`locked_until` in the manifest). Chunks are shared by many points, so
their retention must cover every point that references them. The rule (docs/security.md):

- whenever a chunk's retention is set or extended, it is set to now + 2N;
- each manifest records `chunks_locked_until`, a date before which none of its chunks can
  be deleted;
- at commit, if the parent point's `chunks_locked_until` is at least T + N, chunks the
  new point shares with its parent need nothing; every other chunk the point references
  (new ones, and all of them once the parent's bound runs short) is extended to T + 2N.

So a sync extends only its new chunks, and every chunk of a host is re-extended once per
N (an incremental every hour with N = 30 days renews all chunks once a month). Retention
(`forget`) skips a point before its `locked_until` and gc never deletes a locked object
(S3 refuses it; gc counts it and tries again next time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ...errors import OpenBDRError
from ..blobs import Blobs
from ..manifest import RestorePoint
from .layout import CONFIG, KEYS, chunk_key

log = logging.getLogger(__name__)

MODES = ("COMPLIANCE", "GOVERNANCE")


@dataclass(frozen=True)
class ObjectLock:
    """How long a point stays immutable, and whether the maintenance role can lift it
    (GOVERNANCE with s3:BypassGovernanceRetention) or nobody can (COMPLIANCE)."""

    mode: str = "COMPLIANCE"
    seconds: float = 30 * 86400.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OpenBDRError(
                f"bad Object Lock mode {self.mode!r}", "use compliance or governance"
            )
        if self.seconds <= 0:
            raise OpenBDRError(f"bad lock period {self.seconds!r}", "give --lock-days of 1 or more")

    def to_config(self) -> dict[str, Any]:
        return {"mode": self.mode, "seconds": self.seconds}

    @classmethod
    def from_config(cls, raw: object) -> ObjectLock | None:
        if not raw:
            return None
        if not isinstance(raw, dict):
            raise ValueError("object_lock is not an object")
        return cls(str(raw.get("mode", "COMPLIANCE")), float(raw["seconds"]))


def when(iso: str | None) -> datetime | None:
    if not iso:
        return None
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def locked(point: RestorePoint, now: datetime | None = None) -> datetime | None:
    """The date until which `point` is immutable, if that is still ahead."""
    until = when(point.locked_until)
    if until is None or until <= (now or datetime.now(UTC)):
        return None
    return until


def extend_chunks(blobs: Blobs, lock: ObjectLock, ids: Iterable[bytes], until: datetime) -> int:
    """Set (or extend) the retention of these chunks to `until`, many requests at once."""
    keys = [chunk_key(cid) for cid in ids]
    if not keys:
        return 0
    with ThreadPoolExecutor(max(1, min(blobs.concurrency, 32)), thread_name_prefix="lock") as pool:
        for _ in pool.map(lambda k: blobs.retain(k, lock.mode, until), keys):
            pass
    return len(keys)


def retain_config(blobs: Blobs, lock: ObjectLock, until: datetime) -> None:
    """`config` and the key slots: without them no point can be read, so they are
    retained as long as the chunks (a removed key slot's version lingers until then)."""
    keys = [CONFIG] + [info.key for info in blobs.list(KEYS)]
    for key in keys:
        blobs.retain(key, lock.mode, until)


def chunk_bound(
    blobs: Blobs,
    lock: ObjectLock,
    committed: datetime,
    referenced: set[bytes],
    parent: RestorePoint | None,
    parent_ids: set[bytes],
) -> datetime:
    """Apply the rule above at a commit at `committed`; return the new point's
    `chunks_locked_until`."""
    need = committed + timedelta(seconds=lock.seconds)
    until = committed + timedelta(seconds=2 * lock.seconds)
    bound = when(parent.chunks_locked_until) if parent is not None else None
    if bound is not None and bound >= need:
        todo = referenced - parent_ids
        n = extend_chunks(blobs, lock, todo, until)
        log.info("object lock: %d new chunk(s) retained until %s", n, iso(until))
        return min(bound, until) if referenced & parent_ids else until
    n = extend_chunks(blobs, lock, referenced, until)
    log.info("object lock: %d chunk(s) retained until %s", n, iso(until))
    return until


#: what a write-only (sync) role may delete: its own leases and checkpoints
SYNC_DELETABLE = ("locks/", "checkpoints/")
#: every other top-level name of the layout (layout.py): the role may never delete these
PROTECTED = ("config", "keys/", "chunks/", "indexes/", "points/", "scrub/", "gc/", "drills/")


def sync_role_policy(bucket: str, prefix: str, principals: list[str]) -> dict[str, Any]:
    """The S3 bucket policy that makes `principals` write-only on a repository: they may
    read, put and extend retentions, delete only under locks/ and checkpoints/, and never
    bypass governance retention nor change the bucket's policy, versioning, Object Lock
    or lifecycle. Deny statements only: on Ceph RGW the role is a subuser of the
    repository's owner (its other rights are the owner's); with separate AWS accounts
    or IAM users, grant them read/put/list as usual (docs/security.md)."""
    base = f"arn:aws:s3:::{bucket}/" + (prefix.strip("/") + "/" if prefix.strip("/") else "")
    who = {"AWS": principals}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OpenBDRSyncNeverDeletesPoints",
                "Effect": "Deny",
                "Principal": who,
                "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
                "Resource": [base + name + ("*" if name.endswith("/") else "") for name in PROTECTED],
            },
            {
                "Sid": "OpenBDRSyncNeverUnlocks",
                "Effect": "Deny",
                "Principal": who,
                "Action": [
                    "s3:BypassGovernanceRetention",
                    "s3:PutBucketPolicy",
                    "s3:DeleteBucketPolicy",
                    "s3:PutBucketVersioning",
                    "s3:PutBucketObjectLockConfiguration",
                    "s3:PutLifecycleConfiguration",
                    "s3:DeleteBucket",
                ],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            },
        ],
    }
