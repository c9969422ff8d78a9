"""Key slots under `keys/`: the repository master secret wrapped by passphrases.

    keys/<slot>.json   {"slot", "kdf": "scrypt", "n", "r", "p", "salt", "wrapped"}

Each slot wraps the same master secret with AES-256-GCM under scrypt(passphrase, salt);
the slot's own parameters are the associated data, so editing a slot (a weaker `n`, a
different salt) makes it fail to open rather than weaken it. Adding, removing or
rotating a passphrase rewrites slots only: data is never re-encrypted.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import sys
from datetime import UTC, datetime
from typing import Any

from ...errors import AuthError, CorruptionError, OpenBDRError, RepositoryError
from ..blobs import Blobs, NotFound
from .crypto import RepoKeys, ScryptParams, unwrap, wrap
from .layout import KEYS

PREFIX = KEYS


class PassphraseError(AuthError):
    """No passphrase given, or none of the key slots opens with it."""


def _aad(repo_id: str, slot: dict[str, Any]) -> bytes:
    """Everything in the slot but the wrapped key itself, bound to the repository."""
    fields = {k: v for k, v in slot.items() if k != "wrapped"}
    return f"openbdr key slot|{repo_id}|".encode() + json.dumps(fields, sort_keys=True).encode()


def _params(slot: dict[str, Any]) -> ScryptParams:
    return ScryptParams(int(slot["n"]), int(slot["r"]), int(slot["p"]))


def default_params() -> ScryptParams:
    """scrypt N=2^16 (64 MiB, ~0.2 s); OPENBDR_SCRYPT_N lowers it for tests only."""
    n = int(os.environ.get("OPENBDR_SCRYPT_N", str(1 << 16)))
    return ScryptParams(n=n)


def slots(blobs: Blobs) -> list[dict[str, Any]]:
    out = []
    for info in blobs.list(PREFIX):
        if not info.key.endswith(".json"):
            continue
        try:
            out.append(json.loads(blobs.get(info.key)))
        except (NotFound, ValueError):
            continue
    return sorted(out, key=lambda s: str(s.get("created", "")))


def add_slot(
    blobs: Blobs, repo_id: str, keys: RepoKeys, passphrase: str, params: ScryptParams | None = None
) -> str:
    params = params or default_params()
    slot: dict[str, Any] = {
        "slot": secrets.token_hex(4),
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": secrets.token_bytes(16).hex(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    kek = params.kek(passphrase, bytes.fromhex(slot["salt"]))
    slot["wrapped"] = wrap(kek, keys.master, _aad(repo_id, slot)).hex()
    if not blobs.put_if_absent(f"{PREFIX}{slot['slot']}.json", json.dumps(slot).encode()):
        raise RepositoryError("key slot id collision", "run the command again")
    blobs.flush()
    return str(slot["slot"])


def unlock(blobs: Blobs, repo_id: str, passphrase: str) -> tuple[RepoKeys, str]:
    """The repository keys and the id of the slot that opened; nothing is written."""
    found = slots(blobs)
    if not found:
        raise CorruptionError(
            f"{blobs.url} is encrypted but has no key slots under keys/",
            "restore keys/ from a copy; without a slot the data cannot be read",
        )
    for slot in found:
        try:
            wrapped = str(slot["wrapped"])
            if wrapped != wrapped.lower():
                continue  # hex is written lower-case: an upper-case digit means tampering
            kek = _params(slot).kek(passphrase, bytes.fromhex(str(slot["salt"])))
            master = unwrap(kek, bytes.fromhex(wrapped), _aad(repo_id, slot))
        except (KeyError, ValueError, TypeError):
            continue  # a damaged slot: try the others
        if master is not None:
            return RepoKeys(master), str(slot["slot"])
    raise PassphraseError(
        f"wrong passphrase for repository {blobs.url}",
        "check OPENBDR_PASSWORD or --password-file",
    )


def remove_slot(blobs: Blobs, slot_id: str) -> None:
    ids = [str(s["slot"]) for s in slots(blobs)]
    if slot_id not in ids:
        raise OpenBDRError(f"no key slot {slot_id!r} in {blobs.url}", f"slots: {', '.join(ids)}")
    if len(ids) == 1:
        raise OpenBDRError(
            f"key slot {slot_id} is the last one of {blobs.url}",
            "add another passphrase first; without a slot nothing can be read",
        )
    blobs.delete(f"{PREFIX}{slot_id}.json")
    blobs.flush()


def read_passphrase(*, new: bool = False, confirm: bool = False) -> str:
    """From OPENBDR_PASSWORD (OPENBDR_NEW_PASSWORD), its _FILE variant, or a prompt."""
    var = "OPENBDR_NEW_PASSWORD" if new else "OPENBDR_PASSWORD"
    if os.environ.get(var):
        return os.environ[var]
    path = os.environ.get(var + "_FILE")
    if path:
        return read_password_file(path)
    if not sys.stdin.isatty():
        flag = "--new-password-file" if new else "--password-file"
        raise PassphraseError(
            "the repository is encrypted and no passphrase was given"
            if not new
            else "no new passphrase was given",
            f"set {var} or pass {flag}",
        )
    label = "new passphrase" if new else "repository passphrase"
    value = getpass.getpass(f"{label}: ")
    if confirm and getpass.getpass(f"{label} again: ") != value:
        raise PassphraseError("the passphrases differ", "type the same passphrase twice")
    if not value:
        raise PassphraseError("empty passphrase")
    return value


def _config_body(config: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in config.items() if k != "mac"}, sort_keys=True).encode()


def encrypted_config(blobs: Blobs, config: dict[str, Any], passphrase: str) -> RepoKeys:
    """Turn a fresh config into an encrypted one (no secrets in it) and write its slot."""
    keys = RepoKeys.generate()
    config.pop("hash_key", None)
    config["encryption"] = {
        "cipher": "aes-256-gcm",
        "kdf": "scrypt",
        "key_derivation": "blake3-derive-key",
        "slots": PREFIX,
    }
    config["mac"] = keys.config_mac(_config_body(config))
    add_slot(blobs, str(config["id"]), keys, passphrase)
    return keys


def open_keys(blobs: Blobs, config: dict[str, Any], passphrase: str | None) -> RepoKeys:
    """Unlock an encrypted repository and prove its config was not altered."""
    keys, _slot = unlock(blobs, str(config.get("id")), passphrase or read_passphrase())
    if keys.config_mac(_config_body(config)) != config.get("mac"):
        raise CorruptionError(
            f"{blobs.url}: config fails its authentication (altered)",
            "restore the config object from a copy",
        )
    return keys


def read_password_file(path: str) -> str:
    """A passphrase file's first line (without its line ending); never empty."""
    try:
        with open(path) as f:
            value = f.read().rstrip("\r\n")
    except OSError as exc:
        raise PassphraseError(f"cannot read password file {path}: {exc.strerror}") from None
    if not value:
        raise PassphraseError(f"password file {path} is empty")
    return value
