"""docs/format.md is complete: a reader written from that page alone restores points.

Everything below the `--- reader ---` line was written from docs/format.md, with only
third-party primitives (blake3, zstandard, lz4, cryptography) and nothing of OpenBDR: the
CLI only creates the repositories. Each point's disks are restored by hand from the
repository directory's files and compared with the bytes the source held at its sync.
"""

from __future__ import annotations

import json
import os
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import lz4.block
import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..helpers import openbdr

# --- reader (from docs/format.md only) -----------------------------------------------

MIB = 1 << 20
ZERO_ID = bytes(32)
CHUNK_HEADER = struct.Struct("<4sBBBBIIII")  # §5.1
INDEX_HEADER = struct.Struct("<4sB3xIQQ")  # §6
SEALED_PREFIXES = ("points/", "indexes/", "checkpoints/", "scrub/", "gc/")  # §4.3


class FormatError(Exception):
    """The repository does not read as docs/format.md says it should."""


def canonical(obj: Any) -> bytes:
    """§1: sorted keys, ", " and ": " separators, non-ASCII escaped."""
    return json.dumps(obj, sort_keys=True).encode()


def derive(master: bytes, context: str) -> bytes:
    """§4.2: BLAKE3 derive_key(context, key material = master)."""
    return blake3.blake3(master, derive_key_context=context).digest()


def passphrase_from_file(path: Path) -> str:
    """§4.1: the file's content without trailing CR and LF."""
    return path.read_text().rstrip("\r\n")


def open_slot(slot: dict[str, Any], repo_id: str, passphrase: str) -> bytes | None:
    """§4.1: the master secret, or None when this slot does not open."""
    kek = Scrypt(
        salt=bytes.fromhex(slot["salt"]), length=32, n=slot["n"], r=slot["r"], p=slot["p"]
    ).derive(passphrase.encode())
    wrapped = bytes.fromhex(slot["wrapped"])
    aad = (
        b"openbdr key slot|"
        + repo_id.encode()
        + b"|"
        + canonical({k: v for k, v in slot.items() if k != "wrapped"})
    )
    try:
        return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], aad)
    except InvalidTag:
        return None


def open_sealed(meta_key: bytes, key: str, data: bytes) -> bytes:
    """§4.3: "OBSE" | version 1 | nonce | ciphertext | tag, AAD = first 5 bytes + key."""
    if len(data) < 33 or data[:4] != b"OBSE" or data[4] != 1:
        raise FormatError(f"{key}: not a sealed object")
    try:
        return AESGCM(meta_key).decrypt(data[5:17], data[17:], data[:5] + key.encode())
    except InvalidTag:
        raise FormatError(f"{key}: sealed object fails authentication") from None


@dataclass
class HandReader:
    """A repository directory read by hand."""

    root: Path
    passphrase: str | None = None
    config: dict[str, Any] = field(init=False)
    hash_key: bytes = field(init=False)
    data_key: bytes | None = field(init=False, default=None)
    meta_key: bytes | None = field(init=False, default=None)
    mac_key: bytes | None = field(init=False, default=None)
    #: codec byte -> chunks decoded with it (proves which decoders ran)
    codecs: dict[int, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        config = json.loads((self.root / "config").read_bytes())  # §3
        if config.get("format") != "openbdr-repository" or config.get("version") != 1:
            raise FormatError("not a version 1 repository")
        self.config = config
        slots_dir = self.root / "keys"
        slot_files = sorted(slots_dir.glob("*.json")) if slots_dir.is_dir() else []
        if config["encryption"] is None:
            if slot_files:
                raise FormatError("key slots but no encryption: downgraded config")
            self.hash_key = bytes.fromhex(config["hash_key"])
            return
        if self.passphrase is None:
            raise FormatError("encrypted repository and no passphrase")
        slots = sorted((json.loads(p.read_bytes()) for p in slot_files),
                       key=lambda s: str(s.get("created", "")))
        master = None
        for slot in slots:
            master = open_slot(slot, config["id"], self.passphrase)
            if master is not None:
                break
        if master is None:
            raise FormatError("no key slot opens with this passphrase")
        self.data_key = derive(master, "openbdr 2025 chunk data key")
        self.meta_key = derive(master, "openbdr 2025 metadata key")
        self.hash_key = derive(master, "openbdr 2025 chunk id hash key")
        self.mac_key = derive(master, "openbdr 2025 config mac key")
        check_config_mac(config, self.mac_key)

    # -- objects ---------------------------------------------------------------
    def get(self, key: str) -> bytes:
        data = (self.root / key).read_bytes()
        if self.meta_key is not None and key.startswith(SEALED_PREFIXES):
            return open_sealed(self.meta_key, key, data)
        return data

    def latest(self, host: str) -> str:
        """§7.4: the greatest `<id>.json` name under points/<host>/."""
        names = [
            n for n in os.listdir(self.root / "points" / host)
            if n.endswith(".json") and not n.startswith(".tmp-")
        ]
        return max(names)[: -len(".json")]

    def manifest(self, host: str, point: str) -> dict[str, Any]:
        m: dict[str, Any] = json.loads(self.get(f"points/{host}/{point}.json"))  # §7.2
        if m["host"] != host or m["id"] != point:
            raise FormatError("manifest does not match its key")
        return m

    def index(self, key: str, size: int) -> list[bytes]:
        """§6: header, 32 bytes per block, BLAKE3 trailer."""
        data = self.get(key)
        magic, version, block_size, disk_size, count = INDEX_HEADER.unpack_from(data)
        if magic != b"OBIX" or version != 1 or block_size != MIB:
            raise FormatError(f"{key}: not a version 1 index")
        if blake3.blake3(data[:-32]).digest() != data[-32:]:
            raise FormatError(f"{key}: trailer mismatch")
        if len(data) != 60 + 32 * count or count != -(-disk_size // block_size):
            raise FormatError(f"{key}: length does not match its header")
        if disk_size != size:
            raise FormatError(f"{key}: disk size differs from the manifest")
        return [data[28 + 32 * i : 60 + 32 * i] for i in range(count)]

    def decode_chunk(self, cid: bytes, data: bytes) -> bytes:
        """§5.2, every check."""
        if len(data) < 24:
            raise FormatError("chunk truncated")
        magic, version, codec, flags, res1, raw_len, plen, crc, res2 = CHUNK_HEADER.unpack_from(
            data
        )
        if magic != b"OBCK" or version != 1 or len(data) - 24 != plen:
            raise FormatError("not a version 1 chunk")
        payload = data[24:]
        if res1 or res2 or zlib.crc32(data[:16] + bytes(4) + data[20:24] + payload) != crc:
            raise FormatError("chunk checksum mismatch")
        if flags & 1:
            if self.data_key is None:
                raise FormatError("encrypted chunk in an unencrypted repository")
            aad = CHUNK_HEADER.pack(b"OBCK", 1, codec, flags, 0, raw_len, 0, 0, 0) + cid
            try:
                payload = AESGCM(self.data_key).decrypt(payload[:12], payload[12:], aad)
            except InvalidTag:
                raise FormatError("chunk fails authentication") from None
        if codec == 0:
            block = payload
        elif codec == 1:
            block = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_len)
        elif codec == 2:
            block = lz4.block.decompress(payload, uncompressed_size=raw_len)
        else:
            raise FormatError(f"unknown codec {codec}")
        if len(block) != raw_len or blake3.blake3(block, key=self.hash_key).digest() != cid:
            raise FormatError("chunk content does not match its id")
        self.codecs[codec] = self.codecs.get(codec, 0) + 1
        return block

    def restore(self, host: str, point: str, disk_no: int) -> bytes:
        """§8: the disk's bytes, block by block, every block checked."""
        m = self.manifest(host, point)
        (disk,) = [d for d in m["disks"] if d["index"] == disk_no]
        size = disk["size"]
        out = bytearray(size)  # zero blocks stay zero
        for i, cid in enumerate(self.index(disk["index_key"], size)):
            span = min(MIB, size - i * MIB)
            if cid == ZERO_ID:
                continue
            h = cid.hex()
            block = self.decode_chunk(cid, (self.root / "chunks" / h[:2] / h).read_bytes())
            if len(block) != span:
                raise FormatError(f"block {i}: {len(block)} bytes, span {span}")
            out[i * MIB : i * MIB + span] = block
        return bytes(out)


def check_config_mac(config: dict[str, Any], mac_key: bytes) -> None:
    """§3: keyed BLAKE3 over the canonical JSON of every field but `mac`."""
    body = canonical({k: v for k, v in config.items() if k != "mac"})
    if blake3.blake3(body, key=mac_key).hexdigest() != config.get("mac"):
        raise FormatError("config fails its MAC")


# --- the test: repositories made by the CLI, read by hand ------------------------------


def _text(rng: random.Random, n: int) -> bytes:
    words = [rng.randbytes(4).hex() for _ in range(200)]
    return " ".join(rng.choice(words) for _ in range(n // 5)).encode()[:n].ljust(n, b".")


def _first_images(tmp: Path, rng: random.Random) -> tuple[Path, Path]:
    """disk0: random, text, zeros, half text, random, text again (dedup), short tail;
    disk1: a copy of disk0's text block (dedup across disks) and a short random tail."""
    text = _text(rng, MIB)
    d0 = bytearray(6 * MIB + 4321)
    d0[0:MIB] = rng.randbytes(MIB)
    d0[MIB : 2 * MIB] = text
    d0[3 * MIB : 3 * MIB + MIB // 2] = _text(rng, MIB // 2)
    d0[4 * MIB : 5 * MIB] = rng.randbytes(MIB)
    d0[5 * MIB : 6 * MIB] = text
    d0[6 * MIB :] = rng.randbytes(4321)
    d1 = text + rng.randbytes(MIB // 2 + 7)
    (tmp / "disk0.img").write_bytes(d0)
    (tmp / "disk1.img").write_bytes(d1)
    return tmp / "disk0.img", tmp / "disk1.img"


def _change(img0: Path, img1: Path, rng: random.Random) -> None:
    """Sub-block change, zeros turned into new text, a block zeroed, the tail and the
    second disk grown past a block boundary."""
    d0 = bytearray(img0.read_bytes())
    d0[12345:12345 + 100] = rng.randbytes(100)
    d0[2 * MIB : 3 * MIB] = _text(rng, MIB)
    d0[4 * MIB : 5 * MIB] = bytes(MIB)
    d0[-100:] = rng.randbytes(100)
    img0.write_bytes(d0)
    with open(img1, "ab") as f:
        f.write(_text(rng, MIB))


def _sync(repo: Path, images: tuple[Path, Path], codec: str, pre: list[str],
          env: dict[str, str]) -> dict[str, Any]:
    out = openbdr(*pre, "sync", "-r", str(repo), "-H", "web-1", "--all-data", "-c", codec,
                  "--json", *map(str, images), env=env)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_restore_points_by_hand_from_format_doc(tmp_path: Path, encrypted: bool) -> None:
    rng = random.Random(20)
    env = dict(os.environ, OPENBDR_SCRYPT_N="1024")
    env.pop("OPENBDR_PASSWORD", None)
    repo = tmp_path / "repo"
    pre: list[str] = []
    passphrase = None
    if encrypted:
        pw = tmp_path / "pw"
        pw.write_text("correct horse\n")
        pre = ["--password-file", str(pw)]
        passphrase = passphrase_from_file(pw)
        openbdr(*pre, "repo", "init", "--encrypt", str(repo), env=env)
    else:
        openbdr("repo", "init", str(repo), env=env)

    images = _first_images(tmp_path, rng)
    want1 = [p.read_bytes() for p in images]
    first = _sync(repo, images, "zstd", pre, env)
    _change(*images, rng)
    want2 = [p.read_bytes() for p in images]
    second = _sync(repo, images, "lz4", pre, env)

    reader = HandReader(repo, passphrase)
    assert reader.latest("web-1") == second["id"]
    for point, want in ((first["id"], want1), (second["id"], want2)):
        for no in (0, 1):
            got = reader.restore("web-1", point, no)
            assert got == want[no], f"point {point} disk {no} differs from its source"
    m2 = reader.manifest("web-1", second["id"])
    assert m2["parent"] == first["id"]
    assert reader.index(m2["disks"][0]["index_key"], len(want2[0]))[4] == ZERO_ID
    # every decoder ran: raw (random), zstd (first sync), lz4 (second sync's new text)
    assert set(reader.codecs) == {0, 1, 2}, reader.codecs
    assert (reader.data_key is not None) == encrypted

    # the reader checks what the page says it must: a flipped byte fails
    h = next(p for p in sorted((repo / "chunks").rglob("*")) if p.is_file()).name
    raw = bytearray((repo / "chunks" / h[:2] / h).read_bytes())
    raw[-1] ^= 1
    with pytest.raises(FormatError, match="checksum"):
        reader.decode_chunk(bytes.fromhex(h), bytes(raw))
    if encrypted:
        with pytest.raises(FormatError, match="passphrase"):
            HandReader(repo, "wrong horse")
        config = dict(reader.config, created="2000-01-01T00:00:00+00:00")
        with pytest.raises(FormatError, match="MAC"):
            check_config_mac(config, reader.mac_key or b"")
        index_key = m2["disks"][0]["index_key"]
        with pytest.raises(FormatError, match="authentication"):  # bound to its key
            open_sealed(reader.meta_key or b"", "indexes/other/0", (repo / index_key).read_bytes())
