"""The block-mode wire format, shared by the gateway and its client.

HTTP/1.1 over TLS, several keep-alive connections, bearer token per agent. Blocks travel
in batches, one request body holding one or more frames, each prefixed by its length::

    batch := (frame length u32 | frame)+
    frame := magic "OBWB" | version u8 | 0 u8 | 0 u16 | disk u32 | index u64 | keyed hash (32)
             | chunk envelope (chunk.py: codec, raw length, payload length, crc32, payload)

The envelope carries the codec and both lengths and a CRC of the payload; the keyed BLAKE3
hash of the plaintext is the block's checksum and its index entry. The gateway decodes
every frame of a batch (CRC, decompress with the declared length as a bound, re-hash)
before it writes a byte of it. Batches, not one request per block: a request costs both
ends about a millisecond of CPU in Python's HTTP stack, as much as decoding the block.
"""

from __future__ import annotations

import struct

from ...errors import OpenBDRError

MAGIC = b"OBWB"
VERSION = 1
HEADER = struct.Struct("<4sBBHIQ32s")
LENGTH = struct.Struct("<I")
API = "/v1"
#: a sender closes a batch once it holds this many bytes or frames
BATCH_BYTES = 4 << 20
BATCH_FRAMES = 16
#: the most frames a gateway takes in one batch (each decodes to up to 1 MiB in memory)
MAX_FRAMES = 64
#: the largest batch a gateway accepts (a full batch plus one uncompressed block)
MAX_BATCH = BATCH_BYTES + (1 << 20) + 4096
#: the hash value of a block whose content the gateway cannot vouch for (a torn write)
UNKNOWN_ID = b"\xff" * 32


class WireError(OpenBDRError):
    """A malformed request or an error answer of the gateway."""


def frame_parts(disk: int, index: int, cid: bytes, envelope: bytes) -> tuple[bytes, bytes]:
    """One frame of a batch as its two pieces: the length and header, then the envelope
    (uncopied: a batch is the concatenation of its frames' pieces)."""
    head = HEADER.pack(MAGIC, VERSION, 0, 0, disk, index, cid)
    return LENGTH.pack(len(head) + len(envelope)) + head, envelope


def split_batch(body: bytes | memoryview) -> list[memoryview]:
    """The frames of a batch; a batch that does not split exactly is refused whole."""
    view = memoryview(body)
    frames: list[memoryview] = []
    at = 0
    while at < len(view):
        if len(view) - at < LENGTH.size:
            raise WireError(f"batch truncated at byte {at} (a frame length cut)")
        (n,) = LENGTH.unpack_from(view, at)
        at += LENGTH.size
        if n > len(view) - at:
            raise WireError(f"batch truncated: frame {len(frames)} needs {n} bytes at byte {at}")
        frames.append(view[at : at + n])
        at += n
        if len(frames) > MAX_FRAMES:
            raise WireError(f"batch of more than {MAX_FRAMES} blocks")
    if not frames:
        raise WireError("empty batch of blocks")
    return frames


def unpack_block(body: bytes | memoryview) -> tuple[int, int, bytes, memoryview]:
    if len(body) < HEADER.size:
        raise WireError(f"block frame truncated ({len(body)} bytes)")
    magic, version, _f, _p, disk, index, cid = HEADER.unpack_from(body)
    if magic != MAGIC:
        raise WireError("not a block frame (bad magic)")
    if version != VERSION:
        raise WireError(f"unknown block frame version {version}", "upgrade the gateway")
    return disk, index, cid, memoryview(body)[HEADER.size :]
