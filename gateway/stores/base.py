"""What the credential stores hold, and the protocol every implementation passes.

Records are plain frozen dataclasses; secrets never appear in them, only keyed hashes
(``secret_hash`` is HMAC-SHA-256 under the pepper numbered ``pepper_version``).
Timestamps are wall-clock seconds (``Clock.wall()``), ``None`` meaning "never".

Implementations: ``SqliteCredentialStore`` (the default, a file under ``var/``) and
``RedisCredentialStore`` (shared by every node). Both run the same test suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store could not be reached or answered badly (never "not found")."""


@dataclass(frozen=True, slots=True)
class ConsumerRecord:
    id: str
    plan: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    consumer_id: str
    secret_hash: str
    pepper_version: int
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    #: The key this one replaced by ``rotate``, if any.
    rotated_from: str | None = None


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    consumer_id: str
    secret_hash: str
    pepper_version: int
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    kid: str
    algorithm: str
    #: PKCS#8 PEM of the private key. The store file is created owner-only (0600).
    private_pem: bytes
    created_at: float
    #: When the key stopped signing (a newer key took over); None while active.
    retired_at: float | None = None
    #: The public key stays in the JWKS until then (every token it signed has expired).
    publish_until: float | None = None


class CredentialStore(Protocol):
    async def open(self) -> None:
        """Connect, and create tables or structures on first use."""

    async def close(self) -> None: ...

    # consumers
    async def upsert_consumer(self, consumer: ConsumerRecord) -> None: ...
    async def get_consumer(self, consumer_id: str) -> ConsumerRecord | None: ...
    async def list_consumers(self) -> list[ConsumerRecord]: ...

    # API keys
    async def add_api_key(self, record: ApiKeyRecord) -> None:
        """Raises ``ValueError`` if the key id exists already."""

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    async def list_api_keys(self, consumer_id: str | None = None) -> list[ApiKeyRecord]: ...
    async def set_api_key_expiry(self, key_id: str, expires_at: float | None) -> bool: ...
    async def revoke_api_key(self, key_id: str, at: float) -> bool:
        """True when a live key was revoked; False when unknown or revoked already."""

    async def touch_api_keys(self, last_used: dict[str, float]) -> None:
        """Record last-use times in one batch (written behind, not per request)."""

    # OAuth clients
    async def add_client(self, record: ClientRecord) -> None:
        """Raises ``ValueError`` if the client id exists already."""

    async def get_client(self, client_id: str) -> ClientRecord | None: ...
    async def list_clients(self) -> list[ClientRecord]: ...
    async def revoke_client(self, client_id: str, at: float) -> bool: ...

    # signing keys
    async def add_signing_key(self, record: SigningKeyRecord) -> None: ...
    async def list_signing_keys(self) -> list[SigningKeyRecord]:
        """Oldest first."""

    async def retire_signing_key(self, kid: str, at: float, publish_until: float) -> bool: ...
    async def delete_signing_key(self, kid: str) -> bool: ...
