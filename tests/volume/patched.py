"""A reader over an image with a few bytes replaced: damage without copying the image."""

from __future__ import annotations

from pathlib import Path

from openbdr.volume import FileReader


class PatchedReader:
    def __init__(self, path: Path, patches: dict[int, bytes]) -> None:
        self.base = FileReader(path)
        self.patches = sorted(patches.items())

    @property
    def size(self) -> int:
        return self.base.size

    def read_into(self, offset: int, buf: bytearray | memoryview) -> int:
        n = self.base.read_into(offset, buf)
        view = memoryview(buf)
        for at, data in self.patches:
            lo, hi = max(at, offset), min(at + len(data), offset + n)
            if lo < hi:
                view[lo - offset : hi - offset] = data[lo - at : hi - at]
        return n

    def close(self) -> None:
        self.base.close()
