"""Garbage collection: mark and sweep of chunks no point, checkpoint or running sync needs.

Safety against a sync running at the same time rests on three rules:

1. Mark reads checkpoints *before* manifests: a sync drops its checkpoint only after
   its commit, so every chunk it references is seen in one or the other.
2. Only chunks older than the margin, and older than the start of every live sync
   lease (minus clock slack), are candidates: chunks a running sync wrote are spared.
3. A sync may still re-put an old unreferenced chunk that gc is about to delete (the
   same block content came back). So gc publishes its candidates as an *intent*
   (`gc/intents/`), marks again, and only then deletes; a sync, after its last
   checkpoint and before its commit, calls `fence()`: ids it stored that an overlapping
   intent names are re-read from the source and put again once that gc is done.
   Either the second mark saw the sync's checkpoint (chunk kept) or the sync saw the
   intent (chunk rewritten after the deletion).

The whole run holds the exclusive maintenance lease (heartbeat, stale takeover), which
`forget` takes too.
"""

from __future__ import annotations

import json
import logging
import time

from ...chunk import ID_SIZE, ZERO_ID, chunk_id_from_key, chunk_key
from ...errors import CorruptionError, LockedError
from ..blobs import NotFound
from ..target import GCReport
from .lease import Lease
from .repository import Repository

log = logging.getLogger(__name__)

INTENTS = "gc/intents/"
#: allowed disagreement between this machine's clock and the store's object times
CLOCK_SLACK = 5.0
#: finished intents are kept this long (a sync older than this is long gone)
INTENT_KEEP = 7 * 86400.0
DEFAULT_MARGIN = 3600.0


def maintenance_lease(repo: Repository, ttl: float = 60.0) -> Lease:
    return Lease(repo.blobs, "maintenance", "maintenance (gc or forget) of the repository", ttl)


def _split_ids(data: bytes) -> set[bytes]:
    return {data[k : k + ID_SIZE] for k in range(0, len(data) - ID_SIZE + 1, ID_SIZE)}


def live_sync_leases(repo: Repository, now: float) -> list[dict[str, object]]:
    out = []
    for info in list(repo.blobs.list("locks/host-")):
        try:
            held = json.loads(repo.blobs.get(info.key))
        except (NotFound, ValueError):
            continue
        if float(held.get("expires", 0)) >= now:
            out.append(held)
    return out


def referenced(repo: Repository) -> set[bytes]:
    """Every chunk id a checkpoint or a committed point names (checkpoints first)."""
    ids: set[bytes] = set()
    for info in list(repo.blobs.list("checkpoints/")):
        if info.key.endswith(".index"):
            try:
                ids |= _split_ids(repo.blobs.get(info.key))
            except NotFound:
                continue  # dropped after its commit: the manifest is read below
    for p in repo.points():
        for d in p.disks:
            try:
                ids |= repo.get_index(d.index_key).unique_ids()
            except CorruptionError:
                if repo.blobs.exists(p.key):
                    raise CorruptionError(
                        f"cannot read index {d.index_key} of {p.host} point {p.id}",
                        "gc stopped without deleting anything; run `openbdr verify`",
                    ) from None
    ids.discard(ZERO_ID)
    return ids


def gc(
    repo: Repository, *, margin: float = DEFAULT_MARGIN, dry_run: bool = False, ttl: float = 60.0
) -> GCReport:
    if margin < 0:
        raise ValueError("margin must be >= 0")
    report = GCReport(dry_run=dry_run)
    with maintenance_lease(repo, ttl) as lease:
        start = time.time()
        listed = {}
        for info in repo.blobs.list("chunks/"):
            cid = chunk_id_from_key(info.key)
            if cid is not None:
                listed[cid] = info
        threshold = start - margin
        for held in live_sync_leases(repo, start):
            threshold = min(threshold, float(str(held.get("acquired", 0))) - CLOCK_SLACK)
        marked = referenced(repo)
        report.chunks, report.referenced = len(listed), len(marked & listed.keys())
        unref = [cid for cid in listed if cid not in marked]
        candidates = {cid for cid in unref if listed[cid].mtime < threshold}
        report.young = len(unref) - len(candidates)
        if dry_run:
            report.deleted = len(candidates)
            report.deleted_bytes = sum(listed[c].size for c in candidates)
            return report
        if candidates:
            name = f"{INTENTS}{int(start * 1000):015d}-{lease.token[:8]}"
            repo.blobs.put(name + ".ids", b"".join(sorted(candidates)))
            _set_state(repo, name, "deleting", lease.token)
            candidates -= referenced(repo)  # what a sync checkpointed or committed meanwhile
            for cid in candidates:
                if lease.lost.is_set():
                    raise LockedError("gc lost the maintenance lease", "run gc again")
                repo.blobs.delete(chunk_key(cid))
                report.deleted += 1
                report.deleted_bytes += listed[cid].size
            _set_state(repo, name, "done", lease.token)
        report.indexes_deleted = _orphan_indexes(repo, min(threshold, start - CLOCK_SLACK))
        _expire_intents(repo, start)
        repo.blobs.flush()
    return report


def _set_state(repo: Repository, name: str, state: str, token: str) -> None:
    record = {"state": state, "updated": time.time(), "token": token}
    repo.blobs.put(name + ".json", json.dumps(record).encode())
    repo.blobs.flush()


def _orphan_indexes(repo: Repository, older_than: float) -> int:
    """Indexes whose point was forgotten (or never committed) and are old enough."""
    live = {d.index_key for p in repo.points() for d in p.disks}
    n = 0
    for info in list(repo.blobs.list("indexes/")):
        if info.key not in live and info.mtime < older_than:
            repo.blobs.delete(info.key)
            n += 1
    return n


def _expire_intents(repo: Repository, now: float) -> None:
    for info in list(repo.blobs.list(INTENTS)):
        if info.mtime < now - INTENT_KEEP:
            repo.blobs.delete(info.key)


def fence(repo: Repository, since: float, timeout: float = 3600.0) -> set[bytes]:
    """Ids that a gc overlapping a sync begun at `since` may have deleted.

    Called by a sync after its last checkpoint: waits for each such gc to finish, so the
    caller can put again, safely, any of these ids its new point references.
    """
    hit: set[bytes] = set()
    for info in list(repo.blobs.list(INTENTS)):
        if not info.key.endswith(".json"):
            continue
        name = info.key[: -len(".json")]
        try:
            state = json.loads(repo.blobs.get(info.key))
            ids = _split_ids(repo.blobs.get(name + ".ids"))
        except (NotFound, ValueError):
            continue
        if state.get("state") == "done" and float(state.get("updated", 0)) < since - CLOCK_SLACK:
            continue  # finished before this sync began: its later puts are safe
        deadline = time.monotonic() + timeout
        while not _finished(repo, name, str(state.get("token"))):
            if time.monotonic() > deadline:
                raise LockedError(
                    f"gc run {name} is still deleting chunks",
                    "run the sync again once gc is done",
                )
            time.sleep(0.5)
        hit |= ids
    return hit


def _finished(repo: Repository, name: str, token: str) -> bool:
    try:
        if json.loads(repo.blobs.get(name + ".json")).get("state") == "done":
            return True
    except (NotFound, ValueError):
        return True
    try:
        held = json.loads(repo.blobs.get("locks/maintenance.json"))
    except (NotFound, ValueError):
        return True  # the gc died: nothing deletes any more
    return held.get("token") != token or float(held.get("expires", 0)) < time.time()
