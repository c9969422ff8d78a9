"""Restore: a restore point's disks back to image files (sparse) or block devices.

Chunks are fetched and decoded by worker threads; every block is re-hashed against its
id before it is written, so a damaged repository makes the restore fail with the block
named instead of writing wrong data.
"""

from __future__ import annotations

import os
import queue
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .blocks import BLOCK_SIZE, ZERO_BLOCK, block_span
from .capture.image import device_size
from .chunk import ZERO_ID
from .errors import CorruptionError, OpenBDRError, TargetError
from .store.manifest import DiskRecord, RestorePoint
from .store.objects.repository import Repository
from .writeback import Writeback


@dataclass
class RestoreResult:
    disk: str
    path: str
    size: int
    written_bytes: int
    zero_bytes: int


ProgressFn = Callable[[int, int], None]

#: Fetch-and-decode threads. A restore is bound by the device (reading chunk objects,
#: writing blocks), not the CPU: more requests in flight than cores keep the queue full.
THREADS = 8


def _looks_empty(fd: int, size: int) -> bool:
    """A block device is 'empty' when its first and last MiB and a few samples are zero."""
    buf = bytearray(BLOCK_SIZE)
    for off in {0, max(0, size - BLOCK_SIZE), size // 2, size // 4}:
        n = os.preadv(fd, [buf], off)
        if n and buf[:n] != ZERO_BLOCK[:n]:
            return False
    return True


def _open_target(path: Path, size: int, force: bool) -> tuple[int, bool, bool]:
    """(fd, is_device, created) for a target that may receive `size` bytes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise TargetError(f"restore target {path}: {exc.strerror}") from None
    if st is not None and stat.S_ISBLK(st.st_mode):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise TargetError(f"restore target {path}: cannot open ({exc.strerror})") from None
        have = device_size(fd)
        if have < size:
            os.close(fd)
            raise TargetError(
                f"restore target {path} is too small ({have} bytes, the disk has {size})",
                "use a device at least as large as the disk",
            )
        if not force and not _looks_empty(fd, have):
            os.close(fd)
            raise TargetError(f"restore target {path} is not empty", "pass --force to overwrite it")
        return fd, True, False
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise TargetError(f"restore target {path} is not a file or block device")
    if st is not None and st.st_size > 0 and not force:
        raise TargetError(
            f"restore target {path} exists and is not empty", "pass --force to overwrite it"
        )
    if not path.parent.is_dir():
        raise TargetError(f"restore target {path}: directory {path.parent} does not exist")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.ftruncate(fd, size)
    except OSError as exc:
        raise TargetError(
            f"restore target {path}: {exc.strerror}", "choose a writable location with enough space"
        ) from None
    return fd, False, st is None


def restore_disk(
    repo: Repository,
    point: RestorePoint,
    disk: DiskRecord,
    target: str | os.PathLike[str],
    *,
    force: bool = False,
    threads: int = THREADS,
    progress: ProgressFn | None = None,
) -> RestoreResult:
    path = Path(target)
    index = repo.get_index(disk.index_key)
    codec = repo.codec()
    fd, is_device, created = _open_target(path, disk.size, force)
    writeback = Writeback(fd)
    done = 0
    results: queue.Queue[Any] = queue.Queue()
    written = zeros = 0

    def fetch(i: int, cid: bytes) -> None:
        try:
            where = (
                f"point {point.id} disk {disk.index} ({disk.name}) block {i} "
                f"(offset {i * BLOCK_SIZE})"
            )
            try:
                raw = repo.get_chunk(cid)
            except CorruptionError:
                raise CorruptionError(f"{where}: chunk {cid.hex()[:16]}… is missing") from None
            data = codec.decode(cid, raw, where=where)
            os.pwrite(fd, data, i * BLOCK_SIZE)
            results.put(len(data))
        except BaseException as exc:
            results.put(exc)

    try:
        pending = 0
        limit = threads * 4
        with ThreadPoolExecutor(threads, thread_name_prefix="restore") as pool:
            error: BaseException | None = None

            def collect() -> None:
                """Take one finished block: count it, or keep the first error."""
                nonlocal pending, error, written, done
                item = results.get()
                pending -= 1
                if isinstance(item, BaseException):
                    error = error or item
                else:
                    written += item
                    done += item
                    writeback.wrote(item)

            for i in range(index.count):
                cid = index[i]
                span = block_span(i, disk.size)
                if cid == ZERO_ID:
                    if is_device:
                        os.pwrite(fd, ZERO_BLOCK[:span], i * BLOCK_SIZE)
                        writeback.wrote(span)
                    zeros += span
                    done += span
                    continue
                while pending >= limit:
                    collect()
                if error:
                    break
                pool.submit(fetch, i, cid)
                pending += 1
                if progress:
                    progress(done, disk.size)
            while pending:
                collect()
            if error:
                raise error
        os.fsync(fd)
        if progress:
            progress(disk.size, disk.size)
    except BaseException as exc:
        os.close(fd)
        if created:
            path.unlink(missing_ok=True)
        if isinstance(exc, OpenBDRError):
            raise type(exc)(
                f"{exc.what}; restore of {path} failed"
                + ("" if created else " and the target holds a partial restore"),
                exc.hint,
            ) from None
        raise
    os.close(fd)
    return RestoreResult(disk.name, str(path), disk.size, written, zeros)


def restore(
    repo: Repository,
    point: RestorePoint,
    to: str,
    *,
    disk: int | None = None,
    force: bool = False,
    threads: int = THREADS,
    progress: ProgressFn | None = None,
) -> list[RestoreResult]:
    """One disk to a path, or every disk into a directory as `<name>.img`."""
    if disk is not None:
        match = [d for d in point.disks if d.index == disk]
        if not match:
            raise OpenBDRError(
                f"point {point.id} has no disk {disk}",
                f"it has disks {', '.join(str(d.index) for d in point.disks)}",
            )
        return [
            restore_disk(repo, point, match[0], to, force=force, threads=threads, progress=progress)
        ]
    if len(point.disks) == 1:
        return [
            restore_disk(
                repo, point, point.disks[0], to, force=force, threads=threads, progress=progress
            )
        ]
    out_dir = Path(to)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        restore_disk(
            repo,
            point,
            d,
            out_dir / f"{d.name}.img",
            force=force,
            threads=threads,
            progress=progress,
        )
        for d in point.disks
    ]
