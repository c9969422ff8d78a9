"""Every object key of the object-mode repository, in one place (the format's map).

    config                          format, version, id, block size, hash key / encryption
    keys/<slot>.json                wrapped data keys (encrypted repositories)
    chunks/<ab>/<64 hex>            chunk objects, id = keyed BLAKE3 of the plaintext block
    indexes/<point>/<disk>          one 32-byte chunk id per block of a point's disk
    points/<host>/<point>.json      the manifest; written last, so its presence is the commit
    locks/host-<host>.json          a host's sync lease; locks/maintenance.json: gc, forget
    checkpoints/<host>/…            state.json, disk<N>.index, disk<N>.done of an unfinished sync
    scrub/state                     when each chunk was last verified deeply
    gc/intents/<stamp>.{ids,json}   chunk ids a gc run is deleting, and its progress
    drills/<host>/<drill>/…         drill reports (`Target.meta`, kept by drill/report.py)

docs/format.md gives each object's bytes.
"""

from __future__ import annotations

from ...chunk import ID_SIZE
from ..target import DRILLS

CONFIG = "config"
KEYS = "keys/"
CHUNKS = "chunks/"
INDEXES = "indexes/"
POINTS = "points/"
LOCKS = "locks/"
HOST_LOCKS = LOCKS + "host-"
CHECKPOINTS = "checkpoints/"
SCRUB_STATE = "scrub/state"
GC_INTENTS = "gc/intents/"
#: metadata sealed under the repository key when it is encrypted (chunks carry their own
#: AEAD; config, keys/ and locks/ must be readable without, or before, the passphrase);
#: drill reports too: they hold console and log tails of the protected machines
SEALED = (POINTS, INDEXES, CHECKPOINTS, "scrub/", "gc/", DRILLS)

def chunk_key(chunk_id: bytes) -> str:
    """`chunks/ab/<hex id>`: fanned out by the first byte."""
    h = chunk_id.hex()
    return f"{CHUNKS}{h[:2]}/{h}"


def chunk_id_from_key(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    try:
        raw = bytes.fromhex(name)
    except ValueError:
        return None
    return raw if len(raw) == ID_SIZE else None


def host_points(host: str) -> str:
    return f"{POINTS}{host}/"


def point_key(host: str, point: str) -> str:
    return f"{POINTS}{host}/{point}.json"


def index_key(point: str, disk: int) -> str:
    return f"{INDEXES}{point}/{disk}"


def lock_key(name: str) -> str:
    return f"{LOCKS}{name}.json"


def checkpoint_prefix(host: str) -> str:
    return f"{CHECKPOINTS}{host}/"
