"""A fake `dbdctl` with the documented semantics of dattobd's tool (dbdctl(8)).

    FAKE_DATTO_DIR=DIR python fake_dbdctl.py <sub-command> [<args>]

State lives in DIR: `datto-info` (the /proc/datto-info JSON the driver prints),
`datto<minor>` (the snapshot device: a copy of the block device at the snapshot instant),
`base<minor>` (the same, kept to know what changed). COW files are written where the
caller says, in the documented layout (4096-byte header: magic 4776, flags, fpos, fsize,
seqid, uuid, version, nr_changed_blocks; then one u64 per 4 KiB block). In incremental
mode the real driver marks each written block; this fake marks the blocks whose content
differs at `transition-to-snapshot` (a subset of what the driver would mark).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import uuid
from pathlib import Path

MAGIC = 4776
FLAG_CLEAN, FLAG_INDEX_ONLY = 1, 2
ST_SNAPSHOT, ST_ACTIVE = 1, 2
HEAD = struct.Struct("<IIQQQ16sQQ")
DIR = Path(os.environ["FAKE_DATTO_DIR"])
INFO = DIR / "datto-info"


def fail(msg: str, code: int = 1) -> None:
    print(f"dbdctl: {msg}", file=sys.stderr)
    sys.exit(code)


def load() -> dict:
    if not INFO.exists():
        return {"version": "0.11.0-fake", "devices": []}
    return json.loads(INFO.read_text())


def save(info: dict) -> None:
    tmp = INFO.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, INFO)


def find(info: dict, minor: int) -> dict:
    for d in info["devices"]:
        if d["minor"] == minor:
            return d
    fail(f"no device at minor {minor}", 2)
    raise AssertionError


def size_of(dev: str) -> int:
    with open(dev, "rb") as f:
        return f.seek(0, os.SEEK_END)


def mountpoint_rel(path: Path, dev: str) -> str:
    """The COW path relative to the device's mountpoint; it must be on the device."""
    rdev = os.stat(dev).st_rdev
    p = path.parent.resolve()
    if os.stat(p).st_dev != rdev:
        fail(f"{path} is not on {dev}", 22)
    top = p
    while top != top.parent and os.stat(top.parent).st_dev == rdev:
        top = top.parent
    return "/" + str(path.resolve().relative_to(top))


def write_cow(path: Path, flags: int, seq: int, series: uuid.UUID, nblocks: int,
              index: bytes | None = None, changed: int = 0) -> None:
    head = HEAD.pack(MAGIC, flags, 0, 0, seq, series.bytes, 1, changed).ljust(4096, b"\0")
    with open(path, "wb") as f:
        f.write(head)
        if index is not None:
            f.write(index)
        f.truncate(4096 + nblocks * 8)


def read_device(dev: str, to: Path) -> None:
    """Flushed, then read with O_DIRECT: the file system writes file data past the device's
    page cache, so a cached read could return stale bytes."""
    os.sync()
    subprocess.run(
        ["dd", f"if={dev}", f"of={to}", "bs=1M", "iflag=direct", "status=none"], check=True
    )


def snap(dev: str, minor: int) -> None:
    read_device(dev, DIR / f"base{minor}")
    shutil.copyfile(DIR / f"base{minor}", DIR / f"datto{minor}")


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    info = load()
    if cmd == "setup-snapshot":
        dev, cow, minor = args[-3], Path(args[-2]), int(args[-1])
        if any(d["minor"] == minor for d in info["devices"]):
            fail(f"minor {minor} is in use", 16)
        rel = mountpoint_rel(cow, dev)
        series = uuid.uuid4()
        snap(dev, minor)
        write_cow(cow, 0, 1, series, -(-size_of(dev) // 4096))
        info["devices"].append(
            {"minor": minor, "cow_file": rel, "block_device": dev, "max_cache": 314572800,
             "fallocate": 0, "seq_id": 1, "uuid": series.hex, "version": 1,
             "nr_changed_blocks": 0, "state": ST_SNAPSHOT | ST_ACTIVE}
        )
    elif cmd == "transition-to-incremental":
        d = find(info, int(args[0]))
        if not d["state"] & ST_SNAPSHOT:
            fail("device is not in snapshot mode", 22)
        (DIR / f"datto{d['minor']}").unlink()
        d["state"] = ST_ACTIVE
    elif cmd == "transition-to-snapshot":
        cow, minor = Path(args[-2]), int(args[-1])
        d = find(info, minor)
        if d["state"] & ST_SNAPSHOT:
            fail("device is not in incremental mode", 22)
        dev = d["block_device"]
        rel = mountpoint_rel(cow, dev)
        nblocks = -(-size_of(dev) // 4096)
        index = bytearray(nblocks * 8)
        changed = 0
        read_device(dev, DIR / "now")
        with open(DIR / "now", "rb") as a, open(DIR / f"base{minor}", "rb") as b:
            for i in range(nblocks):
                if a.read(4096) != b.read(4096):
                    struct.pack_into("<Q", index, i * 8, 1)
                    changed += 1
        series = uuid.UUID(d["uuid"])
        top = Path(str(cow.resolve())[: -len(rel)] or "/")
        old = top / d["cow_file"].lstrip("/")
        write_cow(old, FLAG_CLEAN | FLAG_INDEX_ONLY, d["seq_id"], series, nblocks, bytes(index),
                  changed)
        snap(dev, minor)
        write_cow(cow, 0, d["seq_id"] + 1, series, nblocks)
        d.update(cow_file=rel, seq_id=d["seq_id"] + 1, nr_changed_blocks=0,
                 state=ST_SNAPSHOT | ST_ACTIVE)
    elif cmd == "destroy":
        d = find(info, int(args[0]))
        info["devices"].remove(d)
        for f in (DIR / f"datto{d['minor']}", DIR / f"base{d['minor']}"):
            f.unlink(missing_ok=True)
    else:
        fail(f"unknown sub-command {cmd}", 22)
    save(info)


if __name__ == "__main__":
    main(sys.argv[1:])
