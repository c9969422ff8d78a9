"""Instant access: a restore point's disks as NBD exports straight from the repository."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..store.manifest import RestorePoint
from ..store.target import Target
from .image import CowImage, Image, PointImage
from .nbd import NbdServer


@dataclass
class Export:
    name: str
    uri: str
    image: Image


@contextlib.contextmanager
def serve_point(
    repo: Target,
    point: RestorePoint,
    *,
    unix_path: str | None = None,
    overlay: bool = False,
    tmpdir: str | None = None,
) -> Iterator[list[Export]]:
    """Serve every disk of `point` by its name; with `overlay`, writes go to a throwaway COW.

    Without `unix_path` it listens on 127.0.0.1 on a free port.
    """
    with contextlib.ExitStack() as stack:
        images: dict[str, Image] = {}
        for d in point.disks:
            base = PointImage(repo.reader(point, d))
            stack.callback(base.close)
            img: Image = base
            if overlay:
                cow = CowImage(base, tmpdir)
                stack.callback(cow.close)
                img = cow
            images[d.name] = img
        server = NbdServer(images, unix_path=unix_path)
        stack.enter_context(server)
        yield [Export(name, server.uri(name), img) for name, img in images.items()]
