"""The restore's write-out hint: harmless where it is unsupported, loud on real errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from openbdr.writeback import Writeback


def test_starts_write_out_of_a_file(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        wb = Writeback(fd, every=1 << 20)
        os.write(fd, b"x" * (1 << 20))
        wb.wrote(1 << 20)
        assert wb._enabled
    finally:
        os.close(fd)


def test_a_pipe_turns_it_off_instead_of_failing() -> None:
    r, w = os.pipe()
    try:
        wb = Writeback(w, every=10)
        wb.wrote(10)  # sync_file_range on a pipe: ESPIPE
        assert not wb._enabled
        wb.wrote(10)
    finally:
        os.close(r)
        os.close(w)


def test_a_bad_descriptor_is_an_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    wb = Writeback(fd, every=1)
    with pytest.raises(OSError) as exc:
        wb.wrote(1)
    assert exc.value.errno == errno.EBADF
