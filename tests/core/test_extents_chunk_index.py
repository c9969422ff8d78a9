"""Block maths, extents, the chunk envelope and the index format."""

from __future__ import annotations

import itertools
import mmap
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbdr.blocks import BLOCK_SIZE, block_count, is_zero
from openbdr.chunk import HEADER, ChunkCodec, Codec
from openbdr.errors import CorruptionError
from openbdr.extents import Extent, intersect, normalize, subtract, to_blocks, union
from openbdr.store.index import DiskIndex

extent_lists = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60)), max_size=12)


def _bytes_of(exts: list[tuple[int, int]]) -> set[int]:
    return {b for o, n in exts for b in range(o, o + n)}


@given(extent_lists)
def test_normalize_is_sorted_merged_and_exact(exts: list[tuple[int, int]]) -> None:
    out = normalize(exts)
    assert _bytes_of(out) == _bytes_of(exts)
    for a, b in itertools.pairwise(out):
        assert a.end < b.offset  # merged: no touching neighbours


@given(extent_lists, extent_lists)
def test_set_operations_match_brute_force(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> None:
    assert _bytes_of(intersect(a, b)) == _bytes_of(a) & _bytes_of(b)
    assert _bytes_of(subtract(a, b)) == _bytes_of(a) - _bytes_of(b)
    assert _bytes_of(union(a, b)) == _bytes_of(a) | _bytes_of(b)


@given(extent_lists, st.integers(1, 400), st.integers(1, 64))
def test_to_blocks_touches_every_block_with_a_byte(
    exts: list[tuple[int, int]], size: int, bs: int
) -> None:
    want = sorted({b // bs for b in _bytes_of(exts) if b < size})
    assert list(to_blocks(exts, size, bs)) == want


def test_is_zero_on_views_and_short_buffers() -> None:
    buf = bytearray(BLOCK_SIZE)
    assert is_zero(buf) and is_zero(memoryview(buf)) and is_zero(memoryview(buf)[:100])
    buf[-1] = 1
    assert not is_zero(memoryview(buf)) and is_zero(memoryview(buf)[:-1])
    assert block_count(0) == 0 and block_count(1) == 1 and block_count(BLOCK_SIZE + 1) == 2


def test_is_zero_on_views_of_mapped_memory() -> None:
    """Views the engine borrows from a source's map (not bytes-like owners)."""
    m = mmap.mmap(-1, 2 * BLOCK_SIZE)
    with memoryview(m) as whole:
        first, second = whole[:BLOCK_SIZE], whole[BLOCK_SIZE:]
        assert is_zero(first) and is_zero(second[:100])
        m[BLOCK_SIZE - 1] = 7  # past the first 64 bytes: found by the full comparison
        m[BLOCK_SIZE + 3] = 7  # within them: found at once
        assert not is_zero(first) and not is_zero(second) and is_zero(first[:-1])
        del first, second
    m.close()


@pytest.mark.parametrize("codec", list(Codec))
def test_chunk_round_trip_and_codec_kept_only_when_smaller(codec: Codec) -> None:
    c = ChunkCodec(os.urandom(32), codec)
    text = (b"OpenBDR restore points " * 50000)[:BLOCK_SIZE]
    noise = os.urandom(BLOCK_SIZE)
    for block in (text, noise, text[:1234]):
        enc = c.encode(block)
        assert enc.id == c.chunk_id(block)
        assert c.decode(enc.id, enc.data) == block
    assert c.encode(noise).codec is Codec.NONE  # incompressible: stored raw
    if codec is not Codec.NONE:
        assert c.encode(text).codec is codec and len(c.encode(text).data) < len(text) // 10


def test_chunk_ids_are_keyed() -> None:
    block = b"x" * 4096
    assert ChunkCodec(os.urandom(32)).chunk_id(block) != ChunkCodec(os.urandom(32)).chunk_id(block)


def test_every_flipped_byte_is_detected() -> None:
    c = ChunkCodec(os.urandom(32), Codec.ZSTD)
    enc = c.encode((b"abcdefgh" * 1000) + os.urandom(2000))
    for pos in range(0, len(enc.data), max(1, len(enc.data) // 300)):
        bad = bytearray(enc.data)
        bad[pos] ^= 0x40
        with pytest.raises(CorruptionError):
            c.decode(enc.id, bytes(bad))
    with pytest.raises(CorruptionError):
        c.decode(enc.id, enc.data[: HEADER.size - 1])


def test_index_round_trip_resize_and_tamper() -> None:
    size = 5 * BLOCK_SIZE + 17
    idx = DiskIndex(size)
    for i in range(idx.count):
        idx[i] = bytes([i + 1]) * 32
    again = DiskIndex.from_bytes(idx.to_bytes())
    assert again.ids == idx.ids and again.size == size
    grown = idx.resized(8 * BLOCK_SIZE)
    assert grown.count == 8 and grown[4] == idx[4]
    assert grown[5] == bytes(32)  # the short last block changed length: must be re-read
    shrunk = idx.resized(3 * BLOCK_SIZE)
    assert shrunk.count == 3 and shrunk[2] == idx[2]
    raw = bytearray(idx.to_bytes())
    raw[40] ^= 1
    with pytest.raises(CorruptionError):
        DiskIndex.from_bytes(bytes(raw))
    assert [Extent(0, 1)] == normalize([(0, 1)])


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 20 * BLOCK_SIZE), st.integers(0, 20 * BLOCK_SIZE))
def test_resize_keeps_only_blocks_of_unchanged_length(old: int, new: int) -> None:
    from openbdr.blocks import block_span

    idx = DiskIndex(old)
    for i in range(idx.count):
        idx[i] = b"\x01" * 32
    out = idx.resized(new)
    for i in range(out.count):
        same = i < idx.count and block_span(i, old) == block_span(i, new)
        assert (out[i] == b"\x01" * 32) == same
