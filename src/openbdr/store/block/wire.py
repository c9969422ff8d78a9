"""The block-mode wire format, shared by the gateway and its client.

HTTP/1.1 over TLS, several keep-alive connections (one per sending thread), bearer token
per agent. A block travels as one request body::

    magic "OBWB" | version u8 | 0 u8 | 0 u16 | disk u32 | index u64 | keyed hash (32)
    | chunk envelope (chunk.py: codec, raw length, payload length, crc32, payload)

The envelope carries the codec and both lengths and a CRC of the payload; the keyed BLAKE3
hash of the plaintext is the block's checksum and its index entry. The gateway decodes
(CRC, decompress with the declared length as a bound, re-hash) before it writes a byte.
"""

from __future__ import annotations

import struct

from ...errors import OpenBDRError

MAGIC = b"OBWB"
VERSION = 1
HEADER = struct.Struct("<4sBBHIQ32s")
API = "/v1"
#: the hash value of a block whose content the gateway cannot vouch for (a torn write)
UNKNOWN_ID = b"\xff" * 32


class WireError(OpenBDRError):
    """A malformed request or an error answer of the gateway."""


def pack_block(disk: int, index: int, cid: bytes, envelope: bytes) -> bytes:
    return HEADER.pack(MAGIC, VERSION, 0, 0, disk, index, cid) + envelope


def unpack_block(body: bytes) -> tuple[int, int, bytes, memoryview]:
    if len(body) < HEADER.size:
        raise WireError(f"block frame truncated ({len(body)} bytes)")
    magic, version, _f, _p, disk, index, cid = HEADER.unpack_from(body)
    if magic != MAGIC:
        raise WireError("not a block frame (bad magic)")
    if version != VERSION:
        raise WireError(f"unknown block frame version {version}", "upgrade the gateway")
    return disk, index, cid, memoryview(body)[HEADER.size :]
