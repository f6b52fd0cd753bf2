"""Credential formats, and how their secrets are stored: keyed hashes, never plain text.

Why HMAC-SHA-256 under a server secret (the "pepper") and not bcrypt or argon2: an API
key or client secret is 256 bits from ``secrets``, not a password a person chose, so
there is no dictionary to slow down; a slow hash would only spend the latency budget
on every request. Keying the hash means a copy of the credential store alone is not
enough to test guesses offline. Peppers are numbered so they can rotate: each hash
records the version it was made with, and new credentials use the newest.

Formats (recognisable, so a leaked key is easy to spot and to scan for):
- API key:        ``gwk_<key id>_<secret>``   (lookup by the public key id)
- client id:      ``gwc_<id>``
- client secret:  ``gwcs_<secret>``
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

API_KEY_PREFIX = "gwk_"
CLIENT_ID_PREFIX = "gwc_"
CLIENT_SECRET_PREFIX = "gwcs_"  # noqa: S105 - a prefix, not a secret

_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"  # no look-alikes, no '_'
_ID_LENGTH = 12
_KEY_ID = re.compile(rf"^[{_ID_ALPHABET}]{{{_ID_LENGTH}}}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{43}$")  # token_urlsafe(32)


def new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def new_secret() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    secret: str

    def __str__(self) -> str:
        return f"{API_KEY_PREFIX}{self.key_id}_{self.secret}"

    @classmethod
    def generate(cls) -> ApiKey:
        return cls(new_id(), new_secret())


def parse_api_key(text: str) -> ApiKey | None:
    """The key's parts, or None when ``text`` is not shaped like one of our keys."""
    if not text.startswith(API_KEY_PREFIX):
        return None
    key_id, sep, secret = text[len(API_KEY_PREFIX) :].partition("_")
    if not sep or not _KEY_ID.match(key_id) or not _SECRET.match(secret):
        return None
    return ApiKey(key_id, secret)


def new_client_credentials() -> tuple[str, str]:
    return CLIENT_ID_PREFIX + new_id(), CLIENT_SECRET_PREFIX + new_secret()


class Peppers:
    """The versioned server secrets that key the credential hashes."""

    __slots__ = ("_keys", "current")

    def __init__(self, keys: dict[int, bytes], current: int) -> None:
        if current not in keys:
            raise ValueError(f"pepper version {current} is not among {sorted(keys)}")
        self._keys = keys
        self.current = current

    def replace(self, other: Peppers) -> None:
        """Take ``other``'s peppers in place, so every holder of this object sees them."""
        self._keys = other._keys
        self.current = other.current

    def hash(self, secret: str, version: int | None = None) -> tuple[str, int]:
        version = self.current if version is None else version
        digest = hmac.new(self._keys[version], secret.encode(), hashlib.sha256).hexdigest()
        return digest, version

    def verify(self, secret: str, stored_hash: str, version: int) -> bool:
        key = self._keys.get(version)
        if key is None:
            return False
        digest = hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(digest, stored_hash)

    @classmethod
    def load_or_create(cls, path: Path) -> Peppers:
        """Read the pepper file, creating it (owner-only) with one pepper on first run."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            document = {"current": 1, "peppers": {"1": secrets.token_hex(32)}}
            write_private_file(path, json.dumps(document, indent=2).encode())
        document = json.loads(path.read_bytes())
        keys = {
            int(version): bytes.fromhex(value) for version, value in document["peppers"].items()
        }
        return cls(keys, int(document["current"]))

    @staticmethod
    def rotate(path: Path) -> int:
        """Add a new pepper and make it current; older ones keep verifying."""
        document = json.loads(path.read_bytes())
        version = max(int(v) for v in document["peppers"]) + 1
        document["peppers"][str(version)] = secrets.token_hex(32)
        document["current"] = version
        write_private_file(path, json.dumps(document, indent=2).encode())
        return version


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only."""
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)
