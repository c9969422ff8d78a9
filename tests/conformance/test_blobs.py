"""The `Blobs` contract, run against every store and wrapper (restic's backend suite is
the model): what the repository relies on, checked the same way everywhere."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openbdr.store.blobs import Blobs, NotFound, open_blobs
from openbdr.store.limited import LimitedBlobs
from openbdr.store.memory import drop
from openbdr.store.retry import RetryingBlobs
from openbdr.throttle import TokenBucket

KINDS = ["directory", "memory", "s3", "limited", "retrying"]


@pytest.fixture(params=KINDS)
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blobs]:
    kind = request.param
    if kind == "s3":
        request.getfixturevalue("ceph")
        store = open_blobs(f"s3://c-{uuid.uuid4().hex[:12]}/p", create=True)
    elif kind in ("memory", "limited", "retrying"):
        store = open_blobs(f"memory://{uuid.uuid4().hex}", create=True)
        if kind == "limited":
            store = LimitedBlobs(store, TokenBucket(64 << 20))
        elif kind == "retrying":
            store = RetryingBlobs(store)
    else:
        store = open_blobs(str(tmp_path / "d"), create=True)
    yield store
    store.close()
    if store.url.startswith("memory://"):
        drop(store.url)


def test_put_get_replace_delete(blobs: Blobs) -> None:
    blobs.put("a/b/c", b"one")
    assert blobs.get("a/b/c") == b"one"
    blobs.put("a/b/c", memoryview(b"two"))  # atomic replace, any bytes-like
    assert blobs.get("a/b/c") == b"two"
    assert blobs.exists("a/b/c") and not blobs.exists("a/b/d")
    blobs.delete("a/b/c")
    blobs.delete("a/b/c")  # missing is not an error
    assert not blobs.exists("a/b/c")
    with pytest.raises(NotFound):
        blobs.get("a/b/c")
    blobs.put("empty", b"")
    assert blobs.get("empty") == b""


def test_conditional_puts(blobs: Blobs) -> None:
    assert blobs.put_if_absent("lock", b"me")
    assert not blobs.put_if_absent("lock", b"you")
    assert blobs.get("lock") == b"me"
    assert not blobs.replace_if("lock", b"you", b"x")
    assert blobs.replace_if("lock", b"me", b"next")
    assert blobs.get("lock") == b"next"
    assert not blobs.replace_if("missing", b"", b"x")


def test_put_if_absent_has_one_winner(blobs: Blobs) -> None:
    won: list[int] = []

    def race(n: int) -> None:
        if blobs.put_if_absent("race", str(n).encode()):
            won.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and blobs.get("race") == str(won[0]).encode()


def test_list_by_prefix_with_sizes(blobs: Blobs) -> None:
    want = {f"chunks/{i:02x}/{i:064x}": bytes(i) for i in range(40)}
    for k, v in want.items():
        blobs.put(k, v)
    blobs.put("points/h/1.json", b"{}")
    blobs.flush()
    listed = {b.key: b.size for b in blobs.list("chunks/")}
    assert listed == {k: len(v) for k, v in want.items()}
    assert {b.key for b in blobs.list("points/")} == {"points/h/1.json"}
    assert len(list(blobs.list(""))) == 41
    assert list(blobs.list("nothing/")) == []
    keys = [b.key for b in blobs.list("chunks/")]
    if blobs.sorted_listing:
        assert keys == sorted(keys)


def test_large_object(blobs: Blobs) -> None:
    data = uuid.uuid4().bytes * (3 << 16)  # 3 MiB
    blobs.put("big", data)
    blobs.flush()
    assert blobs.get("big") == data


class _Flaky(Blobs):
    """A store that fails every third call with a transient error (a gateway restart)."""

    sorted_listing = True

    def __init__(self, inner: Blobs) -> None:
        self.inner, self.url, self.calls = inner, inner.url, 0
        self.broke: set[str] = set()

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, ConnectionError)

    def _tick(self) -> None:
        self.calls += 1
        if self.calls % 3 == 0:
            raise ConnectionError("reset by peer")

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._tick()
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._tick()
        return self.inner.put_if_absent(key, data)

    def replace_if(self, key: str, expected: bytes, data: bytes) -> bool:
        self._tick()
        return self.inner.replace_if(key, expected, data)

    def get(self, key: str) -> bytes:
        self._tick()
        return self.inner.get(key)

    def exists(self, key: str) -> bool:
        self._tick()
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[Any]:
        for n, info in enumerate(self.inner.list(prefix)):
            if n % 7 == 6 and info.key not in self.broke:  # the connection drops mid-listing
                self.broke.add(info.key)
                raise ConnectionError("reset by peer")
            yield info

    def delete(self, key: str) -> None:
        self._tick()
        self.inner.delete(key)


def test_retries_ride_out_transient_errors_and_resume_listings() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    store = RetryingBlobs(_Flaky(open_blobs(url, create=True)))
    try:
        for i in range(50):
            store.put(f"k/{i:03d}", b"x" * i)
        assert [store.get(f"k/{i:03d}") for i in range(50)] == [b"x" * i for i in range(50)]
        keys = [b.key for b in store.list("k/")]
        assert keys == [f"k/{i:03d}" for i in range(50)]  # resumed: none lost, none twice
    finally:
        drop(url)
