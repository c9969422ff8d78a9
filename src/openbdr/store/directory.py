"""`Blobs` on a local directory (or any mounted file system)."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from ..errors import AuthError, RepositoryError
from ..writeback import start_writeback
from . import fsattr
from .blobs import BlobInfo, Blobs, LockedObject, NotFound


class DirectoryBlobs(Blobs):
    """Writes go to a temporary file and are renamed into place (atomic on POSIX).

    Durability is batched: `put` starts each file's write-out at once (sync_file_range,
    no wait), and `flush()` fsyncs the files (and their directories) written since the
    last flush, several at a time. Not syncfs(2): it also waits for every other writer's
    dirty data on the file system: under a database's load, an agent's flush of 700
    small chunks waited 1.2 s for the database's own 700 MB.

    Locks (`put_locked`, `retain`) are the file system's immutable attribute with the
    retain-until date on the file (`fsattr.py`): the file is renamed into place, then made
    immutable. `delete` of a locked file raises `LockedObject` before its date and clears
    the attribute after it; a put over a locked file (a manifest rewritten with a drill
    verdict, a chunk stored again) replaces it under the same lock, as an S3 overwrite
    adds a version. Both need CAP_LINUX_IMMUTABLE, which an attacker without root on
    this host lacks.
    """

    lock_after_put = True

    #: fsyncs in flight during a flush (they release the GIL; the journal batches them)
    FSYNC_THREADS = 8

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = False, immutable: bool = False
    ) -> None:
        self.root = Path(path).absolute()
        self.url = str(self.root)
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RepositoryError(
                    f"cannot create repository directory {self.root}: {exc.strerror}",
                    "choose a writable path",
                ) from None
        elif not self.root.is_dir():
            raise RepositoryError(
                f"repository {self.root} does not exist",
                f"create it with `openbdr repo init {self.root}`",
            )
        if create and immutable:
            fsattr.probe(self.root)
        #: one locked replacement at a time (clear, rename, set must not interleave)
        self._locking = threading.Lock()
        self._made_dirs: set[Path] = set()
        self._unflushed: list[Path] = []  # list.append is atomic under the GIL
        self._new_dirs: list[Path] = []
        #: the file system takes write-out hints
        self._writeback = True
        self._tmp_prefix = f"{uuid.uuid4().hex[:16]}-"
        self._tmp_seq = itertools.count()  # next() is atomic under the GIL

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad key {key!r}")
        return self.root / key

    def _write_tmp(self, path: Path, data: bytes | memoryview, sync: bool) -> Path:
        parent = path.parent
        if parent not in self._made_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(parent)
            self._new_dirs.append(parent)
        # a process-unique prefix and a counter: uuid4 per file was a getrandom(2) call
        # (a GIL hand-off) and an object per chunk; O_EXCL still guards a clash (a fork)
        tmp = parent / f".tmp-{self._tmp_prefix}{next(self._tmp_seq)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            tmp = parent / f".tmp-{uuid.uuid4().hex}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
            elif self._writeback:
                self._writeback = start_writeback(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    def put(self, key: str, data: bytes | memoryview) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data, sync=False)
        try:
            os.replace(tmp, path)
        except PermissionError:  # over an immutable file: replaced under its lock
            self._install(key, tmp, path, None)
        self._unflushed.append(path)

    # -- the immutable attribute (fsattr.py) -----------------------------------
    def put_locked(self, key: str, data: bytes | memoryview, mode: str, until: datetime) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data, sync=False)
        self._install(key, tmp, path, until)
        self._unflushed.append(path)

    def _install(self, key: str, tmp: Path, path: Path, until: datetime | None) -> None:
        """Rename `tmp` over `path`, locked until the later of `until` and the lock
        `path` holds (unlocked when both have passed)."""
        try:
            with self._locking:
                held = fsattr.held_until(path)
                if held == fsattr.FOREVER:
                    raise LockedObject(
                        f"{self.url}: {key} is immutable and records no retain-until date "
                        "(set by hand?)",
                        f"clear it with `chattr -i {path}` if that was a mistake",
                    )
                keep = max((t for t in (held, until) if t is not None), default=None)
                if keep is not None and keep <= datetime.now(UTC):
                    keep = None
                if keep is not None:
                    fsattr.record(tmp, keep)
                if held is not None:
                    self._flag(path, False)
                os.replace(tmp, path)
                if keep is not None:
                    self._flag(path, True)
        finally:
            tmp.unlink(missing_ok=True)

    def _flag(self, path: Path, on: bool) -> None:
        try:
            fsattr.set_immutable(path, on)
        except PermissionError:
            raise AuthError(
                f"{self.url}: changing the immutable attribute of {path.name} needs root "
                "(CAP_LINUX_IMMUTABLE)",
                "run syncs, gc and forget of an immutable directory repository as root",
            ) from None

    def retain(self, key: str, mode: str, until: datetime) -> None:
        path = self._path(key)
        with self._locking:
            if not path.exists():
                raise NotFound(f"{self.url}: no object {key}")
            held = fsattr.held_until(path)
            if held is not None and held >= until:
                return
            if held is not None:
                self._flag(path, False)
            fsattr.record(path, until)
            self._flag(path, True)

    def locked_until(self, key: str) -> datetime | None:
        return fsattr.held_until(self._path(key))

    def release_expired(self, prefixes: tuple[str, ...]) -> int:
        now = datetime.now(UTC)
        n = 0
        for prefix in prefixes:
            for info in list(self.list(prefix)):
                path = self._path(info.key)
                held = fsattr.held_until(path)
                if held is not None and held <= now:
                    with self._locking:
                        self._flag(path, False)
                    n += 1
        return n

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_tmp(path, data, sync=True)
        try:
            os.link(tmp, path)  # fails if the key exists: an atomic create-exclusive
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self._fsync_dir(path.parent)
        return True

    def replace_if(self, key: str, expected: bytes, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        guard = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                current = path.read_bytes()
            except FileNotFoundError:
                return False
            if current != expected:
                return False
            tmp = self._write_tmp(path, data, sync=True)
            os.replace(tmp, path)
            os.fsync(guard)
            return True
        finally:
            os.close(guard)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.url}: no object {key}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Keys under `prefix`, walking only the directories that can hold them: a prefix
        whose directory does not exist lists nothing rather than the whole repository."""
        head, _, tail = prefix.rpartition("/")
        top = self._path(head) if head else self.root
        try:
            entries = [e for e in os.scandir(top) if e.name.startswith(tail)]
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(".tmp-"):
                continue
            if entry.is_dir(follow_symlinks=False):
                for dirpath, _dirs, files in os.walk(entry.path):
                    for name in files:
                        if not name.startswith(".tmp-"):
                            yield from self._info(os.path.join(dirpath, name))
            else:
                yield from self._info(entry.path)

    def _info(self, full: str) -> Iterator[BlobInfo]:
        """The key of one file, if it still exists."""
        try:
            st = os.stat(full)
        except FileNotFoundError:
            return
        yield BlobInfo(os.path.relpath(full, self.root), st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            return
        except PermissionError:
            held = fsattr.held_until(path)
            if held is None:
                raise
        if held > datetime.now(UTC):
            when = "with no retain-until date" if held == fsattr.FOREVER else f"until {held}"
            raise LockedObject(f"{self.url}: {key} is immutable {when}")
        with self._locking:
            self._flag(path, False)  # its date has passed
        path.unlink(missing_ok=True)

    def flush(self) -> None:
        pending, self._unflushed = self._unflushed, []
        if len(pending) > 1:
            with ThreadPoolExecutor(self.FSYNC_THREADS, thread_name_prefix="fsync") as pool:
                list(pool.map(self._fsync_file, pending))
        elif pending:
            self._fsync_file(pending[0])
        dirs = {p.parent for p in pending}
        for made in self._new_dirs:  # a new directory's own entry lives in its parents
            dirs.update(d for d in made.parents if d.is_relative_to(self.root))
        self._new_dirs = []
        for parent in dirs:
            self._fsync_dir(parent)

    @staticmethod
    def _fsync_file(path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return  # deleted since (retention, gc): nothing to make durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        except OSError as exc:  # some file systems refuse fsync on directories
            if exc.errno not in (errno.EINVAL, errno.EBADF):
                raise
        finally:
            os.close(fd)
