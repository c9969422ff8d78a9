"""Readers the volume parsers work on.

The parsers see a disk only through `BlockReader.read_into`, so that a device, an image, an
RBD image or an EBS snapshot are all parsed the same way. `SubReader` gives a partition its
own zero-based view (parsers then never add partition offsets by hand), `FileReader` opens
an image or a device for `openbdr inspect` and the tests.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable


@runtime_checkable
class BlockReader(Protocol):
    """Same shape as `capture.base.BlockReader`; restated here because volume/ sits below capture/."""

    @property
    def size(self) -> int: ...

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int: ...


def read_at(reader: BlockReader, offset: int, length: int) -> bytes:
    """Read up to `length` bytes at `offset`; short (possibly empty) only past the end.

    Parsers must treat a short result as "structure missing", never index past it.
    """
    size = reader.size
    if offset < 0 or length <= 0 or offset >= size:
        return b""
    length = min(length, size - offset)
    buf = bytearray(length)
    got = 0
    view = memoryview(buf)
    while got < length:
        n = reader.read_into(offset + got, view[got:])
        if n <= 0:
            break
        got += n
    return bytes(buf[:got])


class SubReader:
    """A window `[offset, offset + length)` of another reader, seen from 0 (a partition)."""

    def __init__(self, base: BlockReader, offset: int, length: int) -> None:
        base_size = base.size
        self.base = base
        self.offset = max(0, min(offset, base_size))
        self._size = max(0, min(length, base_size - self.offset))

    @property
    def size(self) -> int:
        return self._size

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        if offset < 0 or offset >= self._size:
            return 0
        n = min(len(buf), self._size - offset)
        view = memoryview(buf)[:n]
        return self.base.read_into(self.offset + offset, view)


class FileReader:
    """A disk image or block device opened read-only (pread, so it is safe across threads).

    The one file reader of the project: sources read their disks through it too.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._size = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            os.close(self._fd)
            raise

    @classmethod
    def from_fd(cls, fd: int, size: int, path: str = "") -> FileReader:
        """Read through a descriptor the caller opened (and closes)."""
        self = cls.__new__(cls)
        self.path, self._fd, self._size = path, fd, size
        return self

    @property
    def size(self) -> int:
        return self._size

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        if offset < 0 or offset >= self._size:
            return 0
        n = min(len(buf), self._size - offset)
        view = memoryview(buf)[:n]
        got = 0
        while got < n:  # a pread may return less than asked (signals, some devices)
            r = os.preadv(self._fd, [view[got:]], offset + got)
            if r == 0:
                break
            got += r
        return got

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesReader:
    """An in-memory disk: for fuzzing the parsers on mutated images."""

    def __init__(self, data: bytes | bytearray, size: int | None = None) -> None:
        self.data = bytes(data)
        self._size = len(self.data) if size is None else size

    @property
    def size(self) -> int:
        return self._size

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        if offset < 0 or offset >= self._size:
            return 0
        n = min(len(buf), self._size - offset)
        chunk = self.data[offset : offset + n]
        view = memoryview(buf)
        view[: len(chunk)] = chunk
        if len(chunk) < n:  # sparse tail reads as zeros
            view[len(chunk) : n] = bytes(n - len(chunk))
        return n
