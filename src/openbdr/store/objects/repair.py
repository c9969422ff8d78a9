"""`openbdr repo repair`: rebuild what the repository itself can rebuild, say what not.

- A manifest that cannot be read is rebuilt from its point's indexes (the id and host are
  in its key; each index holds its disk's size and every block's chunk id; disk names
  come from the nearest intact point of the host with a disk of the same number and size,
  else `disk<N>`). Statistics and the change token are lost: the host's next sync after
  it is a full or hash-compare pass, which is always safe.
- Bookkeeping nobody can read (a checkpoint, the scrub state, a gc intent, a lock that is
  not a lease) is removed: each only saves work, none holds data.
- Damaged chunks are not rebuilt here: `verify --deep` marks them and the host's next sync
  stores those blocks again from the source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ...errors import CorruptionError
from ..blobs import NotFound
from ..index import DiskIndex
from ..manifest import NEWER, DiskRecord, RestorePoint
from .gc import INTENTS, maintenance_lease
from .layout import CHECKPOINTS, INDEXES, LOCKS, SCRUB_STATE, point_key
from .repository import Repository
from .scrub import RECORD

REBUILT = "manifest rebuilt by `openbdr repo repair` from the point's indexes"


@dataclass
class RepairReport:
    rebuilt: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: what could not be repaired, with why
    failed: list[str] = field(default_factory=list)


def _readable_json(repo: Repository, key: str) -> bool:
    try:
        return isinstance(json.loads(repo.blobs.get(key)), dict)
    except NotFound:
        return True
    except (ValueError, CorruptionError):
        return False


def repair(repo: Repository, *, dry_run: bool = False) -> RepairReport:
    rep = RepairReport()
    with maintenance_lease(repo):
        points = repo.points()
        for p in points:
            if p.unreadable:
                _rebuild(repo, p, [q for q in points if q.host == p.host and not q.unreadable],
                         rep, dry_run)
        doomed = [
            i.key
            for i in repo.blobs.list(CHECKPOINTS)
            if i.key.endswith("state.json") and not _readable_json(repo, i.key)
        ]
        doomed += [
            i.key for i in repo.blobs.list(INTENTS)
            if i.key.endswith(".json") and not _readable_json(repo, i.key)
        ]
        doomed += [
            i.key for i in repo.blobs.list(LOCKS)
            if not i.key.endswith("maintenance.json") and not _readable_json(repo, i.key)
        ]
        try:
            state = repo.blobs.get(SCRUB_STATE)
            if len(state) % RECORD.size:
                doomed.append(SCRUB_STATE)
        except NotFound:
            pass
        except CorruptionError:
            doomed.append(SCRUB_STATE)
        for key in doomed:
            if key.startswith(CHECKPOINTS):  # the whole unfinished sync goes
                host = key.split("/")[1]
                if not dry_run:
                    repo.drop_checkpoint(host)
                rep.removed.append(f"checkpoint of host {host} (unreadable)")
                continue
            if not dry_run:
                repo.blobs.delete(key)
                if key.startswith(INTENTS):
                    repo.blobs.delete(key.removesuffix(".json") + ".ids")
            rep.removed.append(f"{key} (unreadable)")
        repo.blobs.flush()
    return rep


def _rebuild(
    repo: Repository, p: RestorePoint, intact: list[RestorePoint], rep: RepairReport,
    dry_run: bool,
) -> None:
    where = f"{p.host} point {p.id}"
    if p.unreadable and NEWER in p.unreadable:
        rep.failed.append(f"{where}: written by a newer OpenBDR; use that release")
        return
    keys = sorted(
        (i.key for i in repo.blobs.list(f"{INDEXES}{p.id}/")),
        key=lambda k: int(k.rsplit("/", 1)[1]) if k.rsplit("/", 1)[1].isdigit() else -1,
    )
    if not keys:
        rep.failed.append(f"{where}: its manifest is damaged and it has no indexes left")
        return
    disks = []
    for n, key in enumerate(keys):
        if key != f"{INDEXES}{p.id}/{n}":
            rep.failed.append(f"{where}: index {key} is not disk {n}: cannot tell its disks")
            return
        try:
            index = repo.get_index(key)
        except CorruptionError as exc:
            rep.failed.append(f"{where}: {exc.what}")
            return
        disks.append(_disk(n, key, index, p, intact))
    try:
        when = datetime.strptime(p.id.split("-")[0], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        rep.failed.append(f"{where}: not a point id")
        return
    new = RestorePoint(
        host=p.host,
        id=p.id,
        created=when.isoformat(timespec="seconds"),
        consistency="crash",
        disks=disks,
        source=REBUILT,
    )
    if not dry_run:
        repo.blobs.put(point_key(p.host, p.id), new.to_bytes())
    rep.rebuilt.append(f"{where}: {len(disks)} disk(s) from their indexes")


def _disk(
    n: int, key: str, index: DiskIndex, p: RestorePoint, intact: list[RestorePoint]
) -> DiskRecord:
    """The disk's record; its name from the nearest intact point with such a disk."""
    name = f"disk{n}"
    nearest = [q for q in reversed(intact) if q.id < p.id] + [q for q in intact if q.id > p.id]
    for q in nearest:
        if n < len(q.disks) and q.disks[n].size == index.size:
            name = q.disks[n].name
            break
    return DiskRecord(
        index=n,
        name=name,
        size=index.size,
        source="",
        index_key=key,
        block_size=index.block_size,
        index_blake3=index.digest(),
        mode="full",
        fallback_reason=REBUILT,
    )
