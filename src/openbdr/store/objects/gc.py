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

On a store that locks after writing (a directory's immutable attribute), gc also keeps
the locks honest first (`enforce_locks`): it clears those whose date has passed, and
locks again whatever an immutable point needs that a crash between write and lock left
unlocked.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from ...chunk import ID_SIZE, ZERO_ID
from ...errors import CorruptionError, LockedError
from ..blobs import LockedObject, NotFound
from ..target import GCReport
from . import immutable
from .layout import (
    CHECKPOINTS,
    CHUNKS,
    CONFIG,
    GC_INTENTS,
    HOST_LOCKS,
    INDEXES,
    KEYS,
    POINTS,
    chunk_id_from_key,
    chunk_key,
    lock_key,
    point_key,
)
from .lease import Lease
from .repository import Repository

log = logging.getLogger(__name__)

INTENTS = GC_INTENTS
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
    for info in list(repo.blobs.list(HOST_LOCKS)):
        try:
            held = json.loads(repo.blobs.get(info.key))
            if float(held.get("expires", 0)) < now:
                continue
        except (NotFound, ValueError, TypeError, AttributeError, CorruptionError):
            continue  # gone, or not a lease any process could renew
        try:
            held["acquired"] = float(held.get("acquired", 0))
        except (TypeError, ValueError):
            held["acquired"] = 0.0  # a live lease of unknown age: spare every chunk
        out.append(held)
    return out


class Unprovable(CorruptionError):
    """An index that a point needs cannot be read: no chunk can be proved unreferenced."""


def referenced(repo: Repository) -> set[bytes]:
    """Every chunk id a checkpoint or a committed point names (checkpoints first).

    A point whose manifest is damaged still holds its chunks: its indexes are found by
    its id (`indexes/<point>/`). An index that cannot be read makes every chunk a possible
    reference (`Unprovable`)."""
    ids: set[bytes] = set()
    for info in list(repo.blobs.list(CHECKPOINTS)):
        if info.key.endswith(".index"):
            try:
                ids |= _split_ids(repo.blobs.get(info.key))
            except NotFound:
                continue  # dropped after its commit: the manifest is read below
            except CorruptionError:
                continue  # a damaged checkpoint is not resumed from: it references nothing
    for p in repo.points():
        keys = (
            [i.key for i in repo.blobs.list(f"{INDEXES}{p.id}/")]
            if p.unreadable
            else [d.index_key for d in p.disks]
        )
        for key in keys:
            try:
                ids |= repo.get_index(key).unique_ids()
            except CorruptionError as exc:
                if repo.blobs.exists(point_key(p.host, p.id)):
                    raise Unprovable(
                        f"{exc.what} (of {p.host} point {p.id}): gc deleted nothing",
                        "repair or forget that point, then run gc again",
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
        if not dry_run:
            enforce_locks(repo, report)
        start = time.time()
        listed = {}
        for info in repo.blobs.list(CHUNKS):
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
                try:
                    repo.blobs.delete(chunk_key(cid))
                except LockedObject:
                    report.locked += 1  # retained by Object Lock: deleted by a later run
                    continue
                report.deleted += 1
                report.deleted_bytes += listed[cid].size
            _set_state(repo, name, "done", lease.token)
        report.indexes_deleted = _orphan_indexes(repo, min(threshold, start - CLOCK_SLACK))
        _expire_intents(repo, start)
        repo.blobs.flush()
    return report


def enforce_locks(repo: Repository, report: GCReport) -> None:
    """Clear expired locks, and lock what each immutable point needs: its manifest and
    indexes until its `locked_until`, its chunks until its `chunks_locked_until` (points
    with the latest chunk date first, so each chunk is looked at once)."""
    lock, blobs = repo.lock, repo.blobs
    if lock is None or not blobs.lock_after_put:
        return
    report.unlocked = blobs.release_expired((CHUNKS, INDEXES, POINTS, KEYS, CONFIG))
    now = datetime.now(UTC)
    points = [p for p in repo.points() if immutable.locked(p, now) is not None]
    points.sort(key=lambda p: immutable.when(p.chunks_locked_until) or now, reverse=True)
    seen: set[bytes] = set()

    def need(key: str, until: datetime, what: str) -> None:
        held = blobs.locked_until(key)
        if held is not None and held >= until:
            return
        try:
            blobs.retain(key, lock.mode, until)
        except NotFound:
            return  # missing: verify reports the point damaged
        report.relocked += 1
        if report.relocked <= 10:
            log.warning("%s was not locked (a crash between write and lock?): locked until %s",
                        what, immutable.iso(until))

    for p in points:
        until = immutable.locked(p, now)
        assert until is not None
        need(point_key(p.host, p.id), until, f"manifest of {p.host} point {p.id}")
        chunks_until = immutable.when(p.chunks_locked_until)
        for d in p.disks:
            need(d.index_key, until, f"index {d.index_key}")
            if chunks_until is None or chunks_until <= now:
                continue
            try:
                ids = repo.get_index(d.index_key).unique_ids() - seen
            except CorruptionError:
                continue  # verify reports it
            ids.discard(ZERO_ID)
            for cid in ids:
                need(chunk_key(cid), chunks_until, f"chunk {cid.hex()} of {p.host} point {p.id}")
            seen |= ids
    if report.relocked > 10:
        log.warning("%d objects of immutable points were not locked: locked now",
                    report.relocked)
    top = max((immutable.when(p.chunks_locked_until) or now for p in points), default=now)
    if top > now:  # config and key slots: as long as the chunks (immutable.retain_config)
        for key in [CONFIG] + [info.key for info in blobs.list(KEYS)]:
            need(key, top, key)


def _set_state(repo: Repository, name: str, state: str, token: str) -> None:
    record = {"state": state, "updated": time.time(), "token": token}
    repo.blobs.put(name + ".json", json.dumps(record).encode())
    repo.blobs.flush()


def _orphan_indexes(repo: Repository, older_than: float) -> int:
    """Indexes whose point was forgotten (or never committed) and are old enough; those
    of a point whose manifest is damaged are kept (repair may need them)."""
    points = repo.points()
    live = {d.index_key for p in points for d in p.disks}
    damaged = tuple(f"{INDEXES}{p.id}/" for p in points if p.unreadable)
    n = 0
    for info in list(repo.blobs.list(INDEXES)):
        if info.key not in live and not info.key.startswith(damaged) and info.mtime < older_than:
            try:
                repo.blobs.delete(info.key)
            except LockedObject:
                continue  # retained by Object Lock until its point's date
            n += 1
    return n


def _expire_intents(repo: Repository, now: float) -> None:
    """Old intents go, and unreadable ones at once: this run holds the maintenance lease,
    so no gc is deleting for them, and a sync's fence would redo all its chunks for them."""
    for info in list(repo.blobs.list(INTENTS)):
        old = info.mtime < now - INTENT_KEEP
        if not old and info.key.endswith(".json"):
            try:
                state = json.loads(repo.blobs.get(info.key))
                state.get("state")
            except NotFound:
                continue
            except (ValueError, AttributeError, CorruptionError):
                old = True
        if old:
            repo.blobs.delete(info.key)
            repo.blobs.delete(info.key.removesuffix(".json") + ".ids")


def fence(repo: Repository, since: float, timeout: float = 3600.0) -> set[bytes] | None:
    """Ids that a gc overlapping a sync begun at `since` may have deleted (None: any of
    them, because an intent cannot be read).

    Called by a sync after its last checkpoint: waits for each such gc to finish, so the
    caller can put again, safely, any of these ids its new point references.
    """
    hit: set[bytes] = set()
    unknown = False
    for info in list(repo.blobs.list(INTENTS)):
        if not info.key.endswith(".json"):
            continue
        name = info.key[: -len(".json")]
        try:
            state = json.loads(repo.blobs.get(info.key))
            ids = _split_ids(repo.blobs.get(name + ".ids"))
            done = state.get("state") == "done"
            updated = float(state.get("updated", 0))
            token = str(state.get("token"))
        except NotFound:
            continue
        except (ValueError, TypeError, AttributeError, CorruptionError):
            log.warning("gc intent %s is unreadable: every chunk of this sync is put again", name)
            unknown, done, updated, token, ids = True, False, 0.0, "", set()
        if done and updated < since - CLOCK_SLACK:
            continue  # finished before this sync began: its later puts are safe
        deadline = time.monotonic() + timeout
        while not _finished(repo, name, token):
            if time.monotonic() > deadline:
                raise LockedError(
                    f"gc run {name} is still deleting chunks",
                    "run the sync again once gc is done",
                )
            time.sleep(0.5)
        hit |= ids
    return None if unknown else hit


def _finished(repo: Repository, name: str, token: str) -> bool:
    """No gc is deleting for this intent any more (an unreadable one: no gc at all)."""
    try:
        if json.loads(repo.blobs.get(name + ".json")).get("state") == "done":
            return True
    except NotFound:
        return True
    except (ValueError, AttributeError, CorruptionError):
        token = ""
    try:
        held = json.loads(repo.blobs.get(lock_key("maintenance")))
        return bool(token and held.get("token") != token) or float(
            held.get("expires", 0)
        ) < time.time()
    except (NotFound, ValueError, TypeError, AttributeError, CorruptionError):
        return True  # the gc died: nothing deletes any more
