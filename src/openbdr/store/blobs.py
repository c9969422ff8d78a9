"""`Blobs`: the small key/value contract every object-mode repository stands on.

Keys are `/`-separated relative paths. Puts are atomic (a reader sees the old object,
the new one, or none, never a torn one). `flush()` makes every put so far durable: the
repository calls it before a checkpoint or a commit names the objects, so puts in the
hot path need not each pay for an fsync.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from ..errors import OpenBDRError


class NotFound(OpenBDRError):
    """The object does not exist."""


class LockedObject(OpenBDRError):
    """The store refused to delete an object under an Object Lock retention."""


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    mtime: float


class Blobs(abc.ABC):
    """An object store: a directory or an S3 bucket prefix."""

    url: str
    #: requests in flight that keep this store busy (object stores want many)
    concurrency: int = 8
    #: puts in flight a writer should keep (0: whatever the writer's CPU-bound default is;
    #: a store with a round trip per put wants many)
    put_concurrency: int = 0
    #: `list` gives keys in ascending order (a broken-off listing can resume after a key)
    sorted_listing: bool = False
    #: `put_locked` writes, then locks (a directory's immutable attribute): a crash in
    #: between leaves the object unlocked, so gc re-applies what committed points need,
    #: and clears locks whose date has passed (S3 retention simply expires)
    lock_after_put: bool = False

    def is_transient(self, exc: BaseException) -> bool:
        """The error may pass if the operation is tried again (`RetryingBlobs`)."""
        return False

    @abc.abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store atomically, replacing any object of that key."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create only if no object of that key exists; False if one did."""

    @abc.abstractmethod
    def replace_if(self, key: str, expected: bytes, data: bytes) -> bool:
        """Replace only if the current content equals `expected` (compare-and-swap)."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; `NotFound` if it does not exist."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every object whose key starts with `prefix`, in no particular order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove; missing objects are not an error."""

    def flush(self) -> None:  # noqa: B027 - most stores are durable on put
        """Make every earlier put durable."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""

    # -- Object Lock (S3): stores without it refuse; docs/security.md ------------------
    def put_locked(self, key: str, data: bytes | memoryview, mode: str, until: datetime) -> None:
        """Store, retained (undeletable, its version unchangeable) until `until`."""
        raise OpenBDRError(f"{self.url} cannot lock objects", "use an S3 bucket with Object Lock")

    def retain(self, key: str, mode: str, until: datetime) -> None:
        """Extend an existing object's retention to `until` (never shortens it)."""
        raise OpenBDRError(f"{self.url} cannot lock objects", "use an S3 bucket with Object Lock")

    def locked_until(self, key: str) -> datetime | None:
        """The lock an object holds now (only stores with `lock_after_put` say)."""
        return None

    def release_expired(self, prefixes: tuple[str, ...]) -> int:
        """Clear the locks whose date has passed under `prefixes`; how many."""
        return 0


class BlobsWrapper(Blobs):
    """A store in front of another (sealing, throttling, retries): each wrapper overrides
    what it changes and passes the rest through."""

    def __init__(self, inner: Blobs) -> None:
        self.inner = inner
        self.url = inner.url
        self.concurrency = inner.concurrency
        self.put_concurrency = inner.put_concurrency
        self.sorted_listing = inner.sorted_listing
        self.lock_after_put = inner.lock_after_put

    def is_transient(self, exc: BaseException) -> bool:
        return self.inner.is_transient(exc)

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(key, data)

    def replace_if(self, key: str, expected: bytes, data: bytes) -> bool:
        return self.inner.replace_if(key, expected, data)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    def put_locked(self, key: str, data: bytes | memoryview, mode: str, until: datetime) -> None:
        self.inner.put_locked(key, data, mode, until)

    def retain(self, key: str, mode: str, until: datetime) -> None:
        self.inner.retain(key, mode, until)

    def locked_until(self, key: str) -> datetime | None:
        return self.inner.locked_until(key)

    def release_expired(self, prefixes: tuple[str, ...]) -> int:
        return self.inner.release_expired(prefixes)


def open_blobs(url: str, *, create: bool = False, object_lock: bool = False) -> Blobs:
    """A directory path (or `file://`), `s3://bucket/prefix` or `memory://name`;
    `object_lock`: the bucket must have S3 Object Lock (created with it by `create`), the
    directory's file system the immutable attribute (`fsattr.py`)."""
    if object_lock and url.startswith("memory://"):
        raise OpenBDRError(
            f"{url}: a memory store cannot lock objects",
            "use an S3 bucket or a directory on ext4, XFS or btrfs (docs/security.md)",
        )
    if url.startswith("memory://"):
        from .memory import MemoryBlobs

        return MemoryBlobs(url, create=create)
    if url.startswith("s3://"):
        from .retry import RetryingBlobs
        from .s3 import S3Blobs

        return RetryingBlobs(S3Blobs(url, create=create, object_lock=object_lock))
    from .directory import DirectoryBlobs

    path = url[len("file://") :] if url.startswith("file://") else url
    return DirectoryBlobs(path, create=create, immutable=object_lock)
