"""`SealedBlobs`: transparent encryption of repository metadata over any `Blobs`.

Manifests, indexes, checkpoints and scrub state go through AES-256-GCM bound to their
key; chunks pass through (the chunk envelope has its own AEAD), and so do `config`,
`keys/` and `locks/` (they must be readable before, or without, the passphrase).
"""

from __future__ import annotations

from ...chunk import Cipher
from ..blobs import Blobs, BlobsWrapper, NotFound
from .crypto import open_object, seal_object
from .layout import SEALED

SEALED_PREFIXES = SEALED


def is_sealed(key: str) -> bool:
    return key.startswith(SEALED_PREFIXES)


class SealedBlobs(BlobsWrapper):
    def __init__(self, inner: Blobs, cipher: Cipher) -> None:
        super().__init__(inner)
        self.cipher = cipher

    def _seal(self, key: str, data: bytes | memoryview) -> bytes | memoryview:
        return seal_object(self.cipher, key, bytes(data)) if is_sealed(key) else data

    def _open(self, key: str, data: bytes) -> bytes:
        return open_object(self.cipher, key, data) if is_sealed(key) else data

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.inner.put(key, self._seal(key, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(key, bytes(self._seal(key, data)))

    def replace_if(self, key: str, expected: bytes, data: bytes) -> bool:
        if not is_sealed(key):
            return self.inner.replace_if(key, expected, data)
        try:
            raw = self.inner.get(key)
        except NotFound:
            return False
        if self._open(key, raw) != expected:
            return False
        return self.inner.replace_if(key, raw, bytes(self._seal(key, data)))

    def get(self, key: str) -> bytes:
        return self._open(key, self.inner.get(key))
