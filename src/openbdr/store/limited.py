"""`Blobs` that send at most a given number of bytes per second (`--bwlimit`).

The limit wraps the store instead of living in the pipeline or a backend, so every
writer of a repository (sync, copy) is held to it the same way.
"""

from __future__ import annotations

from ..throttle import TokenBucket
from .blobs import Blobs, BlobsWrapper


class LimitedBlobs(BlobsWrapper):
    def __init__(self, inner: Blobs, bucket: TokenBucket) -> None:
        super().__init__(inner)
        self.bucket = bucket

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.bucket.take(len(data))
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.bucket.take(len(data))
        return self.inner.put_if_absent(key, data)
