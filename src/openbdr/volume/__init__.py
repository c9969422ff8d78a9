"""Valid data of a disk: partition tables (MBR, GPT) and file-system allocation.

A first sync reads only what `analyze(reader).valid_extents` lists: table structures and
boot regions, the used blocks of every file system we can read (ext2/3/4, XFS, NTFS,
btrfs, swap) and the whole of every volume we cannot.
"""

from __future__ import annotations

from .layout import analyze, probe_filesystem, render_text
from .model import DiskLayout, FilesystemInfo, Partition
from .reader import BlockReader, BytesReader, FileReader, SubReader

__all__ = [
    "BlockReader",
    "BytesReader",
    "DiskLayout",
    "FileReader",
    "FilesystemInfo",
    "Partition",
    "SubReader",
    "analyze",
    "probe_filesystem",
    "render_text",
]
