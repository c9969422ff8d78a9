"""The object-mode repository (DESIGN.md §4) over any `Blobs`.

    config                         format, version, id, block size, hash key / encryption
    chunks/ab/<id>                 immutable chunk objects
    indexes/<point>/<disk>         one chunk id per block
    points/<host>/<point>.json     manifest; written last, so its presence is the commit
    locks/<name>.json              leases
    checkpoints/<host>/…           progress of an unfinished sync (resumable)

Everything a restore or a verify needs is here; the catalog DB only mirrors it.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ...blocks import BLOCK_SIZE
from ...chunk import ChunkCodec, Codec, Encoded
from ...errors import CorruptionError, OpenBDRError, RepositoryError
from ..blobs import Blobs, NotFound, open_blobs
from ..index import DiskIndex
from ..manifest import DiskRecord, RestorePoint, check_host_name
from .crypto import AeadCipher, RepoKeys
from .immutable import ObjectLock, when
from .keys import encrypted_config, open_keys, read_passphrase
from .layout import (
    CHUNKS,
    CONFIG,
    KEYS,
    POINTS,
    checkpoint_prefix,
    chunk_key,
    host_points,
    point_key,
)
from .lease import Lease
from .sealed import SealedBlobs

log = logging.getLogger(__name__)

FORMAT = "openbdr-repository"
VERSION = 1


class Repository:
    def __init__(
        self, blobs: Blobs, config: dict[str, Any], keys: RepoKeys | None = None
    ) -> None:
        self.raw_blobs = blobs
        self.blobs = blobs
        self.config = config
        self.id: str = config["id"]
        self.block_size: int = int(config["block_size"])
        self.keys = keys
        #: S3 Object Lock of points (immutable.py); None: points can be deleted any time
        self.lock = ObjectLock.from_config(config.get("object_lock"))
        self.cipher: AeadCipher | None = None
        if keys is not None:  # encrypted: metadata sealed, chunks under the data key
            self.blobs = SealedBlobs(blobs, keys.meta_cipher())
            self.hash_key = keys.hash_key
            self.cipher = keys.data_cipher()
        else:
            self.hash_key = bytes.fromhex(config["hash_key"])

    # -- life cycle ----------------------------------------------------------
    @classmethod
    def init(
        cls,
        url: str,
        *,
        encrypt: bool = False,
        passphrase: str | None = None,
        object_lock: ObjectLock | None = None,
    ) -> Repository:
        if object_lock is not None and object_lock.mode == "COMPLIANCE" and not url.startswith(
            ("s3://", "memory://")
        ):
            raise RepositoryError(
                f"{url}: a directory cannot lock in compliance mode (root on its host can "
                "clear the immutable attribute)",
                "use --lock-mode governance, or an S3 bucket with Object Lock (docs/security.md)",
            )
        blobs = open_blobs(url, create=True, object_lock=object_lock is not None)
        if blobs.exists(CONFIG):
            raise RepositoryError(
                f"{blobs.url} is already an OpenBDR repository", "use it as it is"
            )
        if any(True for _ in blobs.list("")):
            raise RepositoryError(
                f"{blobs.url} is not empty", "choose an empty directory or bucket prefix"
            )
        config = {
            "format": FORMAT,
            "version": VERSION,
            "id": str(uuid.uuid4()),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "block_size": BLOCK_SIZE,
            "hash": "blake3-keyed",
            "hash_key": secrets.token_bytes(32).hex(),
            "encryption": None,
        }
        if object_lock is not None:
            config["object_lock"] = object_lock.to_config()
        keys = None
        if encrypt:
            keys = encrypted_config(blobs, config, passphrase or read_passphrase(confirm=True))
        if not blobs.put_if_absent(CONFIG, json.dumps(config, indent=1).encode()):
            raise RepositoryError(f"{blobs.url} was initialised concurrently", "use it as it is")
        return cls(blobs, config, keys)

    @classmethod
    def open(cls, url: str, *, passphrase: str | None = None) -> Repository:
        blobs = open_blobs(url)
        try:
            raw = blobs.get(CONFIG)
        except NotFound:
            if _has_repository_objects(blobs):
                raise CorruptionError(
                    f"{url}: the config object is missing, but points and chunks are there",
                    "restore the config object from a copy",
                ) from None
            raise RepositoryError(
                f"{url} is not an OpenBDR repository (no config object)",
                f"check the path, or create one with `openbdr repo init {url}`",
            ) from None
        try:
            config = json.loads(raw)
            fmt, version = config.get("format"), config.get("version")
        except (ValueError, AttributeError):
            raise CorruptionError(
                f"{url}: config is not valid JSON", "restore it from a copy"
            ) from None
        if fmt != FORMAT:
            if _has_repository_objects(blobs):
                raise CorruptionError(
                    f"{url}: config is damaged (format {fmt!r})", "restore it from a copy"
                )
            raise RepositoryError(f"{url} is not an OpenBDR repository (format {fmt!r})")
        if not isinstance(version, int) or version < VERSION:
            raise CorruptionError(
                f"{url}: config is damaged (version {version!r})", "restore it from a copy"
            )
        if version != VERSION:
            raise RepositoryError(
                f"{url} has repository format version {version}; this OpenBDR reads {VERSION}",
                "use the OpenBDR release that wrote it",
            )
        if config.get("encryption"):
            return cls(blobs, config, open_keys(blobs, config, passphrase))
        if "hash_key" not in config or any(True for _ in blobs.list(KEYS)):
            raise CorruptionError(
                f"{url}: config is damaged (no hash key, or key slots but no encryption)",
                "restore the config object from a copy",
            )
        try:
            return cls(blobs, config)
        except OpenBDRError:
            raise CorruptionError(f"{url}: config is damaged", "restore it from a copy") from None
        except (KeyError, ValueError, TypeError):
            raise CorruptionError(f"{url}: config is damaged", "restore it from a copy") from None

    def wrapped(self, wrap: Callable[[Blobs], Blobs]) -> Repository:
        """The same repository with its store behind a wrapper (a bandwidth limit)."""
        other = copy.copy(self)
        other.blobs = wrap(self.blobs)
        return other

    @property
    def url(self) -> str:
        return self.blobs.url

    def codec(self, compression: Codec = Codec.NONE, level: int = 1) -> ChunkCodec:
        return ChunkCodec(self.hash_key, compression, level, cipher=self.cipher)

    def close(self) -> None:
        self.blobs.close()

    # -- chunks --------------------------------------------------------------
    def put_chunk(self, enc: Encoded) -> None:
        self.blobs.put(chunk_key(enc.id), enc.data)

    def get_chunk(self, cid: bytes) -> bytes:
        try:
            return self.blobs.get(chunk_key(cid))
        except NotFound:
            raise CorruptionError(f"chunk {cid.hex()} is missing from {self.url}") from None

    def checked_index(self, point: RestorePoint, disk: DiskRecord) -> DiskIndex:
        """A point's disk index, checked against what the manifest recorded of it."""
        where = f"{point.host} point {point.id} disk {disk.index}"
        index = self.get_index(disk.index_key)
        if disk.index_blake3 is not None and index.digest() != disk.index_blake3:
            raise CorruptionError(
                f"{where}: index {disk.index_key} is not the one the point was committed with"
            )
        if index.size != disk.size or index.block_size != disk.block_size:
            raise CorruptionError(f"{where}: index {disk.index_key} does not match the manifest")
        if index.block_size != BLOCK_SIZE:
            raise CorruptionError(f"{where}: block size {index.block_size} is not {BLOCK_SIZE}")
        return index

    def put_index(self, key: str, index: DiskIndex, until: datetime | None = None) -> None:
        self._put(key, index.to_bytes(), until)

    def _put(self, key: str, data: bytes, until: datetime | None) -> None:
        """A put, retained until `until` when the repository locks its points."""
        if self.lock is not None and until is not None and until > datetime.now(UTC):
            self.blobs.put_locked(key, data, self.lock.mode, until)
        else:
            self.blobs.put(key, data)

    def get_index(self, key: str) -> DiskIndex:
        try:
            return DiskIndex.from_bytes(self.blobs.get(key), where=key)
        except NotFound:
            raise CorruptionError(f"index {key} is missing from {self.url}") from None

    # -- restore points ------------------------------------------------------
    def commit(self, point: RestorePoint) -> None:
        """Make a restore point exist: everything it names must already be durable."""
        self.blobs.flush()
        self._put(point_key(point.host, point.id), point.to_bytes(), when(point.locked_until))
        self.blobs.flush()

    def update_point(self, point: RestorePoint) -> None:
        if point.unreadable:
            raise CorruptionError(point.unreadable, "the point cannot be changed until repaired")
        self._put(point_key(point.host, point.id), point.to_bytes(), when(point.locked_until))
        self.blobs.flush()

    def hosts(self) -> list[str]:
        return sorted({info.key.split("/")[1] for info in self.blobs.list(POINTS)})

    def read_point(self, key: str) -> RestorePoint:
        """The manifest at `key`, checked against where it is stored; `CorruptionError`
        (naming it) when it cannot be read, `NotFound` when it is gone."""
        host, name = key.split("/")[1:3]
        try:
            return RestorePoint.from_bytes(
                self.blobs.get(key), host=host, point=name.removesuffix(".json")
            )
        except NotFound:
            raise
        except CorruptionError as exc:  # a sealed manifest that fails its authentication
            raise CorruptionError(f"manifest {key} is damaged ({exc.what})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptionError(f"manifest {key} is damaged ({exc})") from None

    def _listed(self, prefix: str) -> list[str]:
        return sorted(i.key for i in self.blobs.list(prefix) if i.key.endswith(".json"))

    def points(self, host: str | None = None) -> list[RestorePoint]:
        """Committed restore points, oldest first; one whose manifest cannot be read is a
        stand-in with status `damaged` and the reason, so it damages nothing else."""
        prefix = host_points(check_host_name(host)) if host else POINTS
        out = []
        for key in self._listed(prefix):
            try:
                out.append(self.read_point(key))
            except NotFound:
                continue  # removed by retention while listing
            except CorruptionError as exc:
                out.append(damaged_point(key, exc.what))
        return sorted(out, key=lambda p: (p.host, p.id))

    def point(self, host: str, point: str) -> RestorePoint:
        """A point by id, unique id prefix, or `latest` (the newest readable one)."""
        check_host_name(host)
        if point == "latest":
            newest = self.latest(host)
            if newest is None:
                raise RepositoryError(
                    f"host {host!r} has no restore points in {self.url}",
                    "run `openbdr points` to see the hosts",
                )
            return newest
        try:
            return self.read_point(point_key(host, point))
        except NotFound:
            pass
        matches = [p for p in self.points(host) if p.id.startswith(point)]
        if len(matches) == 1:
            if matches[0].unreadable:
                raise CorruptionError(matches[0].unreadable)
            return matches[0]
        raise RepositoryError(
            f"host {host!r} has no restore point {point!r} in {self.url}"
            + (" (ambiguous prefix)" if matches else ""),
            f"run `openbdr points --repo {self.url} --host {host}`",
        )

    def latest(self, host: str) -> RestorePoint | None:
        """The newest readable point, reading one manifest when it is intact: ids sort in
        time order (`new_point_id`). A damaged newer one is passed over (and logged), so
        the next sync builds on the newest point it can trust."""
        keys = self._listed(host_points(check_host_name(host)))
        while keys:
            key = keys.pop()
            try:
                return self.read_point(key)
            except NotFound:
                continue  # removed by retention while listing
            except CorruptionError as exc:
                log.warning("%s; passing over it", exc.what)
        return None

    # -- checkpoints ---------------------------------------------------------
    def checkpoint_prefix(self, host: str) -> str:
        return checkpoint_prefix(host)

    def load_checkpoint(self, host: str) -> dict[str, Any] | None:
        """An unfinished sync's state; a damaged one is not resumed from (None)."""
        try:
            state = json.loads(self.blobs.get(self.checkpoint_prefix(host) + "state.json"))
        except (NotFound, ValueError, CorruptionError):
            return None
        return state if isinstance(state, dict) else None

    def save_checkpoint(self, host: str, state: dict[str, Any], blobs: dict[str, bytes]) -> None:
        """Durable before returning: the chunks it names were flushed by the caller."""
        prefix = self.checkpoint_prefix(host)
        for name, data in blobs.items():
            self.blobs.put(prefix + name, data)
        self.blobs.flush()
        self.blobs.put(prefix + "state.json", json.dumps(state).encode())
        self.blobs.flush()

    def get_checkpoint_blob(self, host: str, name: str) -> bytes | None:
        try:
            return self.blobs.get(self.checkpoint_prefix(host) + name)
        except (NotFound, CorruptionError):
            return None

    def drop_checkpoint(self, host: str) -> None:
        for info in list(self.blobs.list(self.checkpoint_prefix(host))):
            self.blobs.delete(info.key)

    # -- leases --------------------------------------------------------------
    def host_lease(self, host: str, ttl: float = 60.0) -> Lease:
        return Lease(self.blobs, f"host-{check_host_name(host)}", f"a sync of host {host}", ttl)


def damaged_point(key: str, reason: str) -> RestorePoint:
    """The stand-in of a point whose manifest cannot be read: listed, never used."""
    host, name = key.split("/")[1:3]
    pid = name.removesuffix(".json")
    try:
        created = datetime.strptime(pid.split("-")[0], "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
        when = created.isoformat(timespec="seconds")
    except ValueError:
        when = ""
    return RestorePoint(host, pid, when, "crash", [], status="damaged", unreadable=reason)


def _has_repository_objects(blobs: Blobs) -> bool:
    """Points or chunks: the store was a repository, so a bad config is damage."""
    return any(True for prefix in (POINTS, CHUNKS) for _ in blobs.list(prefix))
