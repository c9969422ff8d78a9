"""The tracker's parser of `trace_pipe` text: every write counted, repeats folded, markers
found, with or without the context columns (task, CPU, time stamp)."""

from __future__ import annotations

from openbdr.capture.linux.tracefs import parse


def test_writes_counted_per_distinct_range_and_highest_marker() -> None:
    chunk = (
        b"block_rq_complete: 7,0 WS () 40 + 8 be,0,4 [0]\n"
        b"block_rq_complete: 7,0 WS () 40 + 8 be,0,4 [0]\n"
        b"  postgres-812  [001] ..... 5120.000001: block_rq_complete: 7,0 W () 2048 + 256 [0]\n"
        b"tracing_mark_write: openbdr-cut-7\n"
        b"block_rq_complete: 259,3 D () 4096 + 2048 [0]\n"
        b"tracing_mark_write: openbdr-cut-9\n"
        b"tracing_mark_write: something else\n"
    )
    writes, marker = parse(chunk)
    assert writes == {(40, 8): 2, (2048, 256): 1, (4096, 2048): 1}
    assert writes.total() == 4 and marker == 9
    assert parse(b"block_rq_complete: 7,0 WS () 1 + 1 [0]\n") == ({(1, 1): 1}, -1)
    assert parse(b"") == ({}, -1)
