"""Restore: a restore point's disks back to image files (sparse) or block devices.

Blocks come through the target's point reader with many reads in flight (what an object
store needs to be fast); each is checked against its recorded hash before it is written,
so a damaged repository makes the restore fail with the block named instead of writing
wrong data.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from dataclasses import dataclass
from pathlib import Path

from .blocks import BLOCK_SIZE, ZERO_BLOCK, block_count, block_span
from .capture.image import device_size
from .errors import OpenBDRError, TargetError
from .store.manifest import DiskRecord, RestorePoint
from .store.target import Target
from .writeback import Writeback


@dataclass
class RestoreResult:
    disk: str
    path: str
    size: int
    written_bytes: int
    zero_bytes: int


ProgressFn = Callable[[int, int], None]


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


def _in_pool(fn: Callable[[int], int], items: list[int], threads: int) -> Iterator[int]:
    """`fn` over `items` with `threads` at work and a bounded queue; results as they come,
    the first error raised once the running calls are done."""
    with ThreadPoolExecutor(threads, thread_name_prefix="restore") as pool:
        pending: set[Future[int]] = set()
        it = iter(items)
        try:
            for i in it:
                pending.add(pool.submit(fn, i))
                if len(pending) >= threads * 2:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        yield f.result()
            for f in as_completed(pending):
                yield f.result()
        finally:
            for f in pending:
                f.cancel()


def restore_disk(
    target: Target,
    point: RestorePoint,
    disk: DiskRecord,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    in_flight: int | None = None,
    progress: ProgressFn | None = None,
) -> RestoreResult:
    path = Path(dest)
    reader = target.reader(point, disk)
    fd, is_device, created = _open_target(path, disk.size, force)
    writeback = Writeback(fd)
    n = block_count(disk.size)
    written = done = 0
    try:
        allocated = bytearray(n)
        blocks = []
        for i in reader.allocated():
            allocated[i] = 1
            blocks.append(i)
        if is_device:  # a file is sparse and zero already; a device holds old data
            for i in range(n):
                if not allocated[i]:
                    span = block_span(i, disk.size)
                    os.pwrite(fd, ZERO_BLOCK[:span], i * BLOCK_SIZE)
                    writeback.wrote(span)
        done = disk.size - sum(block_span(i, disk.size) for i in blocks)

        def fetch_and_write(i: int) -> int:
            """Reads in flight and writes in parallel: a write stalled by the kernel's
            dirty-page throttling must not stop the next fetches (a single writer made a
            restore three times slower)."""
            data = reader.read_block(i)
            os.pwrite(fd, data, i * BLOCK_SIZE)
            return len(data)

        for n in _in_pool(fetch_and_write, blocks, in_flight or reader.in_flight):
            writeback.wrote(n)
            written += n
            done += n
            if progress:
                progress(done, disk.size)
        os.fsync(fd)
        if progress:
            progress(disk.size, disk.size)
    except BaseException as exc:
        os.close(fd)
        reader.close()
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
    reader.close()
    return RestoreResult(disk.name, str(path), disk.size, written, disk.size - written)


def restore(
    target: Target,
    point: RestorePoint,
    to: str,
    *,
    disk: int | None = None,
    force: bool = False,
    in_flight: int | None = None,
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
            restore_disk(target, point, match[0], to, force=force, in_flight=in_flight, progress=progress)
        ]
    if len(point.disks) == 1:
        return [
            restore_disk(
                target, point, point.disks[0], to, force=force, in_flight=in_flight, progress=progress
            )
        ]
    out_dir = Path(to)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        restore_disk(
            target,
            point,
            d,
            out_dir / f"{d.name}.img",
            force=force,
            in_flight=in_flight,
            progress=progress,
        )
        for d in point.disks
    ]
