"""`Blobs` in this process's memory (`memory://NAME`): the conformance suites' reference
store and a fast repository for tests and benchmarks. Gone when the process ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from ..errors import RepositoryError
from .blobs import BlobInfo, Blobs, NotFound

_STORES: dict[str, dict[str, tuple[bytes, float]]] = {}
_LOCK = threading.Lock()


class MemoryBlobs(Blobs):
    sorted_listing = True

    def __init__(self, url: str, *, create: bool = False) -> None:
        self.url = url
        name = url[len("memory://") :]
        with _LOCK:
            if name not in _STORES:
                if not create:
                    raise RepositoryError(f"no in-memory store {url}", "create it first")
                _STORES[name] = {}
            self._objects = _STORES[name]

    def put(self, key: str, data: bytes | memoryview) -> None:
        with _LOCK:
            self._objects[key] = (bytes(data), time.time())

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with _LOCK:
            if key in self._objects:
                return False
            self._objects[key] = (bytes(data), time.time())
            return True

    def replace_if(self, key: str, expected: bytes, data: bytes) -> bool:
        with _LOCK:
            held = self._objects.get(key)
            if held is None or held[0] != expected:
                return False
            self._objects[key] = (bytes(data), time.time())
            return True

    def get(self, key: str) -> bytes:
        with _LOCK:
            held = self._objects.get(key)
        if held is None:
            raise NotFound(f"{self.url}: no object {key}")
        return held[0]

    def exists(self, key: str) -> bool:
        with _LOCK:
            return key in self._objects

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with _LOCK:
            items = sorted((k, v) for k, v in self._objects.items() if k.startswith(prefix))
        for key, (data, mtime) in items:
            yield BlobInfo(key, len(data), mtime)

    def delete(self, key: str) -> None:
        with _LOCK:
            self._objects.pop(key, None)


def drop(url: str) -> None:
    """Forget an in-memory store (tests clean up with it)."""
    with _LOCK:
        _STORES.pop(url[len("memory://") :], None)
