"""Cryptographic primitives of encrypted repositories.

One random 32-byte master secret per repository; every key in use is derived from it
with BLAKE3's key-derivation mode, so a key slot only ever wraps the master:

    data key      AES-256-GCM of chunk payloads (the `Cipher` hook of chunk.py)
    meta key      AES-256-GCM of manifests, indexes, checkpoints and scrub state
    hash key      keyed BLAKE3 chunk ids (ids leak nothing about content without it)
    config key    keyed BLAKE3 MAC over the plaintext config (no field can be altered)

The master is wrapped per key slot by a key-encryption key from scrypt(passphrase).
AES-GCM nonces are random 96-bit values: safe for far more than 2^32 objects per key
before the birthday bound matters (4 PiB of 1 MiB chunks).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ...chunk import Cipher
from ...errors import CorruptionError

NONCE = 12
TAG = 16
KEY = 32
SEALED_MAGIC = b"OBSE"
SEALED_HEADER = struct.Struct("<4sB")
SEALED_VERSION = 1


class AeadCipher(Cipher):
    """AES-256-GCM with a random nonce per message: payload = nonce | ciphertext | tag."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, bytes(plaintext), aad)

    def open(self, payload: bytes | memoryview, aad: bytes) -> bytes:
        data = bytes(payload)
        if len(data) < NONCE + TAG:
            raise CorruptionError("encrypted payload truncated")
        try:
            return self._aead.decrypt(data[:NONCE], data[NONCE:], aad)
        except InvalidTag:
            raise CorruptionError(
                "authentication failed: the object was altered or belongs to another repository"
            ) from None


def _derive(master: bytes, purpose: str) -> bytes:
    return blake3.blake3(master, derive_key_context=f"openbdr 2025 {purpose}").digest()


@dataclass(frozen=True)
class RepoKeys:
    """Every key of one repository, derived from its master secret."""

    master: bytes

    @property
    def data_key(self) -> bytes:
        return _derive(self.master, "chunk data key")

    @property
    def meta_key(self) -> bytes:
        return _derive(self.master, "metadata key")

    @property
    def hash_key(self) -> bytes:
        return _derive(self.master, "chunk id hash key")

    def config_mac(self, config_body: bytes) -> str:
        return blake3.blake3(config_body, key=_derive(self.master, "config mac key")).hexdigest()

    def data_cipher(self) -> AeadCipher:
        return AeadCipher(self.data_key)

    def meta_cipher(self) -> AeadCipher:
        return AeadCipher(self.meta_key)

    @classmethod
    def generate(cls) -> RepoKeys:
        return cls(os.urandom(KEY))


def seal_object(cipher: Cipher, key: str, plaintext: bytes) -> bytes:
    """An encrypted metadata object, bound to its key so that objects cannot be swapped."""
    head = SEALED_HEADER.pack(SEALED_MAGIC, SEALED_VERSION)
    return head + cipher.seal(plaintext, head + key.encode())


def open_object(cipher: Cipher, key: str, data: bytes) -> bytes:
    if len(data) < SEALED_HEADER.size or data[:4] != SEALED_MAGIC:
        raise CorruptionError(f"{key}: not an encrypted object (bad magic)")
    head = data[: SEALED_HEADER.size]
    if SEALED_HEADER.unpack(head)[1] != SEALED_VERSION:
        raise CorruptionError(f"{key}: unknown encrypted object version")
    try:
        return cipher.open(data[SEALED_HEADER.size :], head + key.encode())
    except CorruptionError as exc:
        raise CorruptionError(f"{key}: {exc.what}") from None


@dataclass(frozen=True)
class ScryptParams:
    n: int = 1 << 16
    r: int = 8
    p: int = 1

    def kek(self, passphrase: str, salt: bytes) -> bytes:
        """The key-encryption key: memory-hard, so guessing passphrases is expensive."""
        kdf = Scrypt(salt=salt, length=KEY, n=self.n, r=self.r, p=self.p)
        return kdf.derive(passphrase.encode())


def wrap(kek: bytes, secret: bytes, aad: bytes) -> bytes:
    return AeadCipher(kek).seal(secret, aad)


def unwrap(kek: bytes, wrapped: bytes, aad: bytes) -> bytes | None:
    """The secret, or None when the passphrase (or the slot) is wrong."""
    try:
        return AeadCipher(kek).open(wrapped, aad)
    except CorruptionError:
        return None
