"""Secrets at rest and credentials.

Cloud credentials and repository passphrases are stored Fernet-encrypted (AES-CBC +
HMAC) with a key that lives in the data directory (`server.key`, mode 0600), never in
the catalog: a stolen database dump alone reveals nothing. API tokens and agent
credentials are random and stored only as SHA-256 digests; passwords use scrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from ..errors import OpenBDRError


class SecretError(OpenBDRError):
    """A stored secret cannot be decrypted with this server's key."""


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """Load the server key, creating it (0600) on first start."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, value: dict[str, Any] | None) -> str | None:
        if not value:
            return None
        return self._fernet.encrypt(json.dumps(value).encode()).decode()

    def open(self, sealed: str | None) -> dict[str, Any]:
        if not sealed:
            return {}
        try:
            return dict(json.loads(self._fernet.decrypt(sealed.encode())))
        except InvalidToken:
            raise SecretError(
                "a stored secret cannot be decrypted with this server's key",
                "start the server with the data directory (server.key) that stored it",
            ) from None


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${key.hex()}"


def check_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt, key = stored.split("$")
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1)
    return hmac.compare_digest(got.hex(), key)
