"""A restore point's disks as files in a FUSE mount: `<mountpoint>/<disk name>`.

This is how the host gets a block device of a point without an nbd kernel module:
a loop device over the FUSE file. It runs in its own process
(`python -m openbdr.drill.fusefile`) so that a mount outlives nothing it should not:
unmounting ends the process, and killing the process ends the mount.
"""

from __future__ import annotations

import argparse
import sys

from ..overlay import CowImage, Image, serve
from .image import PointImage


def main(argv: list[str] | None = None) -> int:
    from ..store.target import open_target

    ap = argparse.ArgumentParser(prog="python -m openbdr.drill.fusefile")
    ap.add_argument("repo")
    ap.add_argument("host")
    ap.add_argument("point")
    ap.add_argument("mountpoint")
    ap.add_argument("--overlay", action="store_true", help="writable, writes thrown away")
    ap.add_argument("--tmpdir")
    args = ap.parse_args(argv)
    repo = open_target(args.repo)
    point = repo.point(args.host, args.point)
    images: dict[str, Image] = {}
    for d in point.disks:
        img: Image = PointImage(repo.reader(point, d))
        if args.overlay:
            img = CowImage(img, args.tmpdir)
        images[d.name] = img
    serve(images, args.mountpoint, args.overlay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
