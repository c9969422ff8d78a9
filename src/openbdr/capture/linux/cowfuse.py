"""The copy-on-write volume daemon: one `CowStore` as a FUSE file, plus a control socket.

    python -m openbdr.capture.linux.cowfuse VOLUME_DIR MOUNTPOINT

`MOUNTPOINT/volume` is the volume (a loop device sits on it); every write reaches the
store synchronously (`direct_io`: no page cache between the loop device and the store),
so once a file system on it is frozen, the store holds all of it. The control socket
`VOLUME_DIR/control.sock` takes one JSON line and answers one:

- `{"cmd": "snapshot", "since": {"session": …, "gen": …} | null}` → the frozen map is
  written to `VOLUME_DIR/snaps/<id>.map` (u32 slot per 1 MiB block, 0xffffffff = zero);
  the answer holds `id`, `gen`, `session`, `map`, `data`, `size` and `changed` (the
  blocks written since `since`, or null with `why`);
- `{"cmd": "release", "id": …}`; `{"cmd": "status"}`.

Unmounting the FUSE file system stops the daemon cleanly (state saved as clean).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socketserver
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .cowstore import CowStore

log = logging.getLogger(__name__)

FILE = "volume"
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def control_path(root: Path) -> Path:
    return Path(root) / "control.sock"


def _ops(store: CowStore) -> Any:
    import mfusepy as fuse

    now = time.time_ns()
    path_ = "/" + FILE

    class Ops(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def _check(self, path: str) -> None:
            if path != path_:
                raise fuse.FuseOSError(errno.ENOENT)

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            times = {"st_atime": now, "st_mtime": now, "st_ctime": now}
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
            self._check(path)
            return {
                "st_mode": stat.S_IFREG | 0o600,
                "st_nlink": 1,
                "st_size": store.size,
                "st_blocks": (store.size + 511) // 512,
                **times,
            }

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", FILE]

        def open(self, path: str, flags: int) -> int:
            self._check(path)
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return store.read(offset, size)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            if offset + len(data) > store.size:
                raise fuse.FuseOSError(errno.ENOSPC)
            try:
                return store.write(offset, data)
            except OSError as exc:
                log.error("write %d+%d: %s", offset, len(data), exc)
                raise fuse.FuseOSError(errno.EIO) from None

        def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
            if mode & FALLOC_FL_PUNCH_HOLE:
                store.discard(offset, size)
                return 0
            if mode == 0 and offset + size <= store.size:
                return 0  # allocation of an existing range: nothing to do
            raise fuse.FuseOSError(errno.EOPNOTSUPP)

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            if length != store.size:
                raise fuse.FuseOSError(errno.EPERM)

        def flush(self, path: str, fh: int) -> None:
            return None

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            store.flush()

        def statfs(self, path: str) -> dict[str, int]:
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

        def destroy(self, path: str) -> None:
            store.close()

    return Ops()


def _answer(store: CowStore, req: dict[str, Any]) -> dict[str, Any]:
    cmd = req.get("cmd")
    if cmd == "snapshot":
        f, changed, why = store.snapshot(req.get("since"))
        snaps = store.root / "snaps"
        snaps.mkdir(exist_ok=True)
        mp = snaps / f"{f.id}.map"
        mp.write_bytes(f.map.tobytes())
        return {
            "ok": True,
            "id": f.id,
            "gen": f.gen,
            "session": store.track.session,
            "volume": store.id,
            "size": store.size,
            "map": str(mp),
            "data": str(store.root / "data"),
            "changed": None if changed is None else changed.blocks(),
            "why": why,
        }
    if cmd == "release":
        sid = str(req.get("id"))
        store.release(sid)
        (store.root / "snaps" / f"{sid}.map").unlink(missing_ok=True)
        return {"ok": True}
    if cmd == "status":
        return {"ok": True, **store.stats()}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


def _control(store: CowStore) -> socketserver.UnixStreamServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                reply = _answer(store, json.loads(self.rfile.readline() or b"{}"))
            except Exception as exc:  # a bad request must not stop the volume
                log.exception("control request failed")
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    path = control_path(store.root)
    path.unlink(missing_ok=True)
    server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
    server.daemon_threads = True
    os.chmod(path, 0o600)
    threading.Thread(target=server.serve_forever, name="cowvol-control", daemon=True).start()
    return server


def serve(root: Path, mountpoint: Path) -> None:
    """Blocks until the FUSE file system is unmounted."""
    import mfusepy as fuse

    store = CowStore(root)
    for old in (root / "snaps").glob("*.map"):  # snapshots do not survive a restart
        old.unlink()
    server = _control(store)
    try:
        fuse.FUSE(
            _ops(store),
            str(mountpoint),
            foreground=True,
            nothreads=False,
            fsname=f"openbdr-cowvol-{store.id[:8]}",
            subtype="openbdr-cowvol",
            direct_io=True,
        )
    finally:
        server.shutdown()
        server.server_close()
        control_path(root).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m openbdr.capture.linux.cowfuse")
    ap.add_argument("volume_dir", type=Path)
    ap.add_argument("mountpoint", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s cowvol %(message)s")
    serve(args.volume_dir, args.mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
