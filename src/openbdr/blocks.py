"""Block maths: everything above the source works in 1 MiB blocks."""

from __future__ import annotations

BLOCK_SIZE = 1 << 20
ZERO_BLOCK = bytes(BLOCK_SIZE)


def block_count(size: int, block_size: int = BLOCK_SIZE) -> int:
    """Number of blocks covering `size` bytes (the last one may be short)."""
    return (size + block_size - 1) // block_size


def block_span(index: int, size: int, block_size: int = BLOCK_SIZE) -> int:
    """Length in bytes of block `index` of a disk of `size` bytes."""
    start = index * block_size
    return max(0, min(block_size, size - start))


def is_zero(buf: bytes | bytearray | memoryview) -> bool:
    """True if every byte is zero.

    A memcmp against a shared zero buffer; memoryview comparison is element-wise in
    CPython (70x slower), so views are compared through their bytes-like owner.
    """
    if isinstance(buf, memoryview):
        owner = buf.obj
        if isinstance(owner, bytes | bytearray) and len(owner) == buf.nbytes:
            buf = owner
        elif buf[:64].tobytes() != ZERO_BLOCK[: min(64, buf.nbytes)]:
            return False  # most blocks that are not zero say so at once: spare the copy
        else:
            buf = buf.tobytes()
    n = len(buf)
    if n == BLOCK_SIZE:
        return buf == ZERO_BLOCK
    return buf == ZERO_BLOCK[:n] if n < BLOCK_SIZE else buf == bytes(n)
