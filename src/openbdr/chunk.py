"""The chunk envelope: what one stored block looks like.

A chunk object is self-describing so that a restore or a scrub needs nothing but the
object and the repository keys::

    magic "OBCK" | version u8 | codec u8 | flags u8 | 0 u8 | raw_len u32 | payload_len u32
    | crc32(header with crc 0 | payload) u32 | 0 u32 | payload

All integers are little-endian. The chunk id is the keyed BLAKE3 hash of the plaintext
block, so a block's id reveals nothing without the repository's hash key, identical
blocks share one object, and a decode re-hashes the plaintext to prove it is the block
that was stored. The codec is chosen per chunk and kept only when it makes the chunk
smaller. `flags & ENCRYPTED` marks an AEAD payload (nonce | ciphertext | tag) whose
associated data is the header.
"""

from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import dataclass
from enum import IntEnum

import blake3
import lz4.block
import zstandard

from .errors import CorruptionError, OpenBDRError

MAGIC = b"OBCK"
VERSION = 1
HEADER = struct.Struct("<4sBBBBIIII")
ENCRYPTED = 0x01
ID_SIZE = 32
ZERO_ID = bytes(ID_SIZE)


class Codec(IntEnum):
    NONE = 0
    ZSTD = 1
    LZ4 = 2

    @classmethod
    def parse(cls, name: str) -> Codec:
        try:
            return cls[name.upper()]
        except KeyError:
            raise OpenBDRError(
                f"unknown compression {name!r}", "use one of: zstd, lz4, none"
            ) from None


class Cipher:
    """AEAD hook for encrypted repositories; the plain repository uses none."""

    def seal(self, plaintext: bytes | memoryview, aad: bytes) -> bytes:
        raise NotImplementedError

    def open(self, payload: bytes | memoryview, aad: bytes) -> bytes:
        raise NotImplementedError


#: where `_has_zero_pages` looks: one 4 KiB page every 64 KiB
_PAGE, _STRIDE = 4096, 65536
_ZERO_PAGE = bytes(_PAGE)


def _has_zero_pages(view: memoryview) -> bool:
    """A block with all-zero pages (the padding around valid data in a partly used block,
    a database's empty pages): worth LZ4 even when compression is off. Sixteen compares
    of 4 KiB, so incompressible blocks pay nothing measurable."""
    return any(
        view[off : off + _PAGE] == _ZERO_PAGE for off in range(0, len(view) - _PAGE + 1, _STRIDE)
    )


@dataclass(frozen=True)
class Encoded:
    id: bytes
    data: bytes
    codec: Codec


class ChunkCodec:
    """Hashes, compresses and wraps blocks; thread-safe (per-thread compressors)."""

    def __init__(
        self,
        hash_key: bytes,
        codec: Codec = Codec.NONE,
        level: int = 1,
        cipher: Cipher | None = None,
    ) -> None:
        if len(hash_key) != 32:
            raise ValueError("hash key must be 32 bytes")
        self.hash_key = hash_key
        self.codec = codec
        self.level = level
        self.cipher = cipher
        self._local = threading.local()

    # -- hashing -------------------------------------------------------------
    def chunk_id(self, block: bytes | bytearray | memoryview) -> bytes:
        return blake3.blake3(block, key=self.hash_key).digest()

    # -- compression ---------------------------------------------------------
    def _zstd_c(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "zc", None)
        if c is None:
            c = self._local.zc = zstandard.ZstdCompressor(level=self.level)
        return c

    def _zstd_d(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "zd", None)
        if d is None:
            d = self._local.zd = zstandard.ZstdDecompressor()
        return d

    def _compress(self, block: bytes | memoryview, codec: Codec) -> bytes | None:
        if codec is Codec.ZSTD:
            return self._zstd_c().compress(block)
        if codec is Codec.LZ4:
            return lz4.block.compress(block, store_size=False)
        return None

    def encode(
        self,
        block: bytes | bytearray | memoryview,
        chunk_id: bytes | None = None,
        codec: Codec | None = None,
    ) -> Encoded:
        """Wrap one plaintext block; `chunk_id` may be passed when already computed."""
        view = memoryview(block)
        cid = chunk_id if chunk_id is not None else self.chunk_id(view)
        want = self.codec if codec is None else codec
        if want is Codec.NONE and _has_zero_pages(view):
            want = Codec.LZ4  # zero padding (free space in a block) is not data: not stored
        payload: bytes | memoryview = view
        used = Codec.NONE
        if want is not Codec.NONE:
            packed = self._compress(view, want)
            if packed is not None and len(packed) < len(view):
                payload, used = packed, want
        flags = ENCRYPTED if self.cipher else 0
        if self.cipher:
            header_for_aad = HEADER.pack(MAGIC, VERSION, used, flags, 0, len(view), 0, 0, 0)
            payload = self.cipher.seal(payload, header_for_aad + cid)
        unsigned = HEADER.pack(MAGIC, VERSION, used, flags, 0, len(view), len(payload), 0, 0)
        crc = zlib.crc32(payload, zlib.crc32(unsigned))
        header = HEADER.pack(MAGIC, VERSION, used, flags, 0, len(view), len(payload), crc, 0)
        return Encoded(cid, b"".join((header, payload)), used)  # one copy of the payload

    def decode(self, chunk_id: bytes, data: bytes | memoryview, where: str = "") -> bytes:
        """Unwrap and prove a chunk: checksum, decompress, re-hash against its id."""
        label = where or f"chunk {chunk_id.hex()}"
        view = memoryview(data)
        if len(view) < HEADER.size:
            raise CorruptionError(f"{label}: chunk object truncated ({len(view)} bytes)")
        magic, version, codec, flags, res1, raw_len, payload_len, crc, res2 = HEADER.unpack_from(
            view
        )
        if magic != MAGIC:
            raise CorruptionError(f"{label}: not a chunk object (bad magic)")
        if version != VERSION:
            raise CorruptionError(f"{label}: unknown chunk format version {version}")
        payload = view[HEADER.size :]
        if len(payload) != payload_len:
            raise CorruptionError(
                f"{label}: payload is {len(payload)} bytes, header says {payload_len}"
            )
        unsigned = HEADER.pack(magic, version, codec, flags, res1, raw_len, payload_len, 0, res2)
        if res1 or res2 or zlib.crc32(payload, zlib.crc32(unsigned)) != crc:
            raise CorruptionError(f"{label}: checksum mismatch")
        if flags & ENCRYPTED:
            if self.cipher is None:
                raise CorruptionError(f"{label}: chunk is encrypted but the repository is not")
            aad = HEADER.pack(MAGIC, VERSION, codec, flags, 0, raw_len, 0, 0, 0) + chunk_id
            payload = memoryview(self.cipher.open(payload, aad))
        try:
            plain = self._decompress(Codec(codec), payload, raw_len)
        except (ValueError, zstandard.ZstdError, lz4.block.LZ4BlockError) as exc:
            raise CorruptionError(f"{label}: cannot decompress ({exc})") from None
        if len(plain) != raw_len or self.chunk_id(plain) != chunk_id:
            raise CorruptionError(f"{label}: content does not match its hash")
        return plain

    def _decompress(self, codec: Codec, payload: memoryview, raw_len: int) -> bytes:
        if codec is Codec.NONE:
            return bytes(payload)
        if codec is Codec.ZSTD:
            return self._zstd_d().decompress(payload, max_output_size=raw_len)
        if codec is Codec.LZ4:
            return lz4.block.decompress(payload, uncompressed_size=raw_len)
        raise ValueError(f"unknown codec {codec}")


