"""Scrubbing: which chunks a sampled deep verify reads, and what it does with bad ones.

`scrub/state` records when each chunk was last proved good (id | u64 unix seconds,
sorted by id). A sampled run reads the chunks verified longest ago (never-verified
first), so `verify --deep --sample P` run ceil(100/P) times covers every chunk.

A chunk that is missing or fails its checks marks every point using it as damaged
(`status: damaged`, one `damaged` entry per block); a later scrub that finds the chunk
good again (the next sync of the host rewrote it from the source) clears the mark.
"""

from __future__ import annotations

import logging
import math
import random
import struct
import time
from collections.abc import Iterable, Mapping

from ...blocks import BLOCK_SIZE
from ...errors import CorruptionError, LockedError
from ...extents import Extent
from ..blobs import NotFound
from ..manifest import RestorePoint
from .layout import SCRUB_STATE, point_key
from .repository import Repository

log = logging.getLogger(__name__)

STATE_KEY = SCRUB_STATE
RECORD = struct.Struct("<32sQ")

Users = Mapping[bytes, list[tuple[RestorePoint, int, int]]]


def load_state(repo: Repository) -> dict[bytes, int]:
    try:
        data = repo.blobs.get(STATE_KEY)
    except NotFound:
        return {}
    except CorruptionError:
        log.warning("%s is damaged; starting the scrub cycle afresh", STATE_KEY)
        return {}
    if len(data) % RECORD.size:
        log.warning("%s is damaged; starting the scrub cycle afresh", STATE_KEY)
        return {}
    return dict(RECORD.iter_unpack(data))


def save_state(
    repo: Repository, state: dict[bytes, int], live: Iterable[bytes] | None = None
) -> None:
    """Keep records of chunks still referenced (`live`, when known): no unbounded growth."""
    keep = set(live) if live is not None else None
    body = b"".join(
        RECORD.pack(cid, t) for cid, t in sorted(state.items()) if keep is None or cid in keep
    )
    repo.blobs.put(STATE_KEY, body)
    repo.blobs.flush()


def pick(state: Mapping[bytes, int], ids: list[bytes], sample: float, seed: int | None) -> list[bytes]:
    """The `sample` percent of `ids` verified longest ago (random among equals)."""
    if not ids:
        return []
    n = max(1, math.ceil(len(ids) * sample / 100))
    rng = random.Random(seed)
    order = sorted(ids, key=lambda cid: (state.get(cid, 0), rng.random()))
    return order[:n]


def damaged_ids(point: RestorePoint | None) -> set[bytes]:
    if point is None:
        return set()
    return {bytes.fromhex(str(d["chunk"])) for d in point.damaged if d.get("chunk")}


def damaged_extents(point: RestorePoint | None, disk_name: str, size: int) -> list[Extent]:
    """The blocks of one disk (by name) that a scrub marked bad in `point`."""
    if point is None:
        return []
    nos = {d.index for d in point.disks if d.name == disk_name}
    out = []
    for d in point.damaged:
        if d.get("disk") in nos and d.get("offset") is not None:
            off = int(d["offset"])
            if off < size:
                out.append(Extent(off, min(BLOCK_SIZE, size - off)))
    return out


def mark(
    repo: Repository,
    users: Users,
    bad: Mapping[bytes, str],
    good: set[bytes],
    points: list[RestorePoint],
    wait: float = 120.0,
) -> list[RestorePoint]:
    """Record damage in the manifests (and clear damage proved repaired); changed points."""
    from .gc import maintenance_lease  # gc imports the repository layer only

    new: dict[str, list[dict[str, object]]] = {}
    for cid, reason in bad.items():
        for p, disk, off in users.get(cid, []):
            new.setdefault(point_key(p.host, p.id), []).append(
                {"disk": disk, "offset": off, "block": off // BLOCK_SIZE, "chunk": cid.hex(),
                 "reason": reason}
            )
    touched = [
        p for p in points if not p.unreadable and (point_key(p.host, p.id) in new or p.damaged)
    ]
    if not touched:
        return []
    deadline = time.monotonic() + wait
    while True:  # manifests change only under the maintenance lease (forget, gc)
        try:
            lease = maintenance_lease(repo).acquire()
            break
        except LockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    changed = []
    try:
        for p in touched:
            keep = [
                d for d in p.damaged
                if bytes.fromhex(str(d["chunk"])) not in good
                and bytes.fromhex(str(d["chunk"])) not in bad
            ]
            entries = keep + new.get(point_key(p.host, p.id), [])
            entries.sort(key=lambda d: (int(str(d["disk"])), int(str(d["offset"]))))
            status = "damaged" if entries else ("ok" if p.status == "damaged" else p.status)
            if entries == p.damaged and status == p.status:
                continue
            if not repo.blobs.exists(point_key(p.host, p.id)):
                continue  # forgotten meanwhile
            p.damaged, p.status = entries, status
            repo.update_point(p)
            changed.append(p)
    finally:
        lease.release()
    return changed


def damaged_ids_of(points: Iterable[RestorePoint]) -> set[bytes]:
    out: set[bytes] = set()
    for p in points:
        out |= damaged_ids(p)
    return out
