"""Verify a repository: quick (every referenced chunk exists) or deep (decode and re-hash).

Every problem names the block as point, disk and offset, so an operator knows which
restore points are affected and what to re-sync.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ...blocks import BLOCK_SIZE
from ...errors import CorruptionError, OpenBDRError
from ..manifest import RestorePoint
from ..target import Problem, VerifyReport
from . import scrub
from .layout import CHUNKS, chunk_id_from_key
from .repository import Repository

ProgressFn = Callable[[int, int], None]


def verify(
    repo: Repository,
    *,
    host: str | None = None,
    deep: bool = False,
    sample: float = 100.0,
    threads: int = 4,
    progress: ProgressFn | None = None,
    seed: int | None = None,
    mark: bool = True,
) -> VerifyReport:
    if not 0 < sample <= 100:
        raise OpenBDRError(f"bad --sample {sample}", "give a percentage in (0, 100]")
    report = VerifyReport()
    points = repo.points(host)
    report.points = len(points)
    # chunk id -> every (point, disk, offset) using it
    users: dict[bytes, list[tuple[RestorePoint, int, int]]] = defaultdict(list)
    for p in points:
        if p.unreadable:
            report.problems.append(Problem(p.host, p.id, -1, None, p.unreadable))
        for d in p.disks:
            try:
                index = repo.checked_index(p, d)
            except CorruptionError as exc:
                report.problems.append(Problem(p.host, p.id, d.index, None, exc.what))
                continue
            for i, cid in index.nonzero():
                users[cid].append((p, d.index, i * BLOCK_SIZE))
    report.chunks_referenced = len(users)
    present = {cid for cid in (chunk_id_from_key(b.key) for b in repo.blobs.list(CHUNKS)) if cid}
    bad: dict[bytes, str] = {}
    good: set[bytes] = set()
    for cid, where in users.items():
        if cid not in present:
            bad[cid] = f"chunk {cid.hex()} is missing"
            for p, disk, off in where:
                report.problems.append(Problem(p.host, p.id, disk, off, bad[cid]))
    if deep:
        ids = [cid for cid in users if cid in present]
        state = scrub.load_state(repo)
        if sample < 100:  # least recently verified first; chunks marked damaged always
            redo = scrub.damaged_ids_of(points) & set(ids)
            rest = [cid for cid in ids if cid not in redo]
            ids = [*redo, *scrub.pick(state, rest, sample, seed)]
        codec = repo.codec()

        def check(cid: bytes) -> tuple[bytes, str | None]:
            try:
                codec.decode(cid, repo.get_chunk(cid))
            except CorruptionError as exc:
                return cid, exc.what.split(": ", 1)[-1]
            return cid, None

        with ThreadPoolExecutor(threads, thread_name_prefix="verify") as pool:
            for n, (cid, err) in enumerate(pool.map(check, ids), 1):
                report.chunks_checked += 1
                if err:
                    bad[cid] = err
                    for p, disk, off in users[cid]:
                        report.problems.append(Problem(p.host, p.id, disk, off, err))
                else:
                    good.add(cid)
                    state[cid] = int(time.time())
                if progress:
                    progress(n, len(ids))
        scrub.save_state(repo, state, users.keys() if host is None else None)
    if mark:
        scrub.mark(repo, users, bad, good, points)
    report.problems.sort(key=lambda pr: (pr.host, pr.point, pr.disk, pr.offset or -1))
    return report
