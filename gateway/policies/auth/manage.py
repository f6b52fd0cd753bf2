"""Creating, listing, rotating and revoking credentials: one implementation for the
``gateway keys``/``clients``/``signing-keys`` commands and the admin API.

Plain secrets exist only in the values these functions return, to be shown once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...context import Clock
from ...stores.base import ApiKeyRecord, ClientRecord, ConsumerRecord, CredentialStore
from .secrets import ApiKey, Peppers, new_client_credentials


@dataclass(frozen=True, slots=True)
class CreatedKey:
    record: ApiKeyRecord
    #: The whole key, ``gwk_<id>_<secret>``: shown once, never stored.
    key: str


@dataclass(frozen=True, slots=True)
class CreatedClient:
    record: ClientRecord
    #: The client secret: shown once, never stored.
    secret: str


async def ensure_consumer(
    store: CredentialStore, clock: Clock, consumer_id: str, plan: str | None, default_plan: str
) -> ConsumerRecord:
    existing = await store.get_consumer(consumer_id)
    if existing is not None and (plan is None or plan == existing.plan):
        return existing
    record = ConsumerRecord(
        id=consumer_id,
        plan=plan or (existing.plan if existing else default_plan),
        created_at=existing.created_at if existing else clock.wall(),
    )
    await store.upsert_consumer(record)
    return record


async def create_api_key(
    store: CredentialStore,
    peppers: Peppers,
    clock: Clock,
    *,
    consumer_id: str,
    plan: str | None = None,
    default_plan: str = "free",
    scopes: tuple[str, ...] = (),
    expires_in: float | None = None,
    rotated_from: str | None = None,
) -> CreatedKey:
    await ensure_consumer(store, clock, consumer_id, plan, default_plan)
    key = ApiKey.generate()
    secret_hash, version = peppers.hash(key.secret)
    now = clock.wall()
    record = ApiKeyRecord(
        key_id=key.key_id,
        consumer_id=consumer_id,
        secret_hash=secret_hash,
        pepper_version=version,
        scopes=tuple(sorted(set(scopes))),
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
        rotated_from=rotated_from,
    )
    await store.add_api_key(record)
    return CreatedKey(record, str(key))


async def rotate_api_key(
    store: CredentialStore, peppers: Peppers, clock: Clock, key_id: str, *, overlap: float
) -> CreatedKey | None:
    """A new key for the same consumer and scopes; the old one keeps working for
    ``overlap`` seconds (or less, if it was to expire sooner). None if unknown/revoked."""
    old = await store.get_api_key(key_id)
    if old is None or old.revoked_at is not None:
        return None
    now = clock.wall()
    remaining = None if old.expires_at is None else max(0.0, old.expires_at - now)
    created = await create_api_key(
        store,
        peppers,
        clock,
        consumer_id=old.consumer_id,
        scopes=old.scopes,
        expires_in=remaining,
        rotated_from=old.key_id,
    )
    until = now + overlap
    if old.expires_at is None or old.expires_at > until:
        await store.set_api_key_expiry(old.key_id, until)
    return created


async def create_client(
    store: CredentialStore,
    peppers: Peppers,
    clock: Clock,
    *,
    consumer_id: str,
    plan: str | None = None,
    default_plan: str = "free",
    scopes: tuple[str, ...] = (),
) -> CreatedClient:
    await ensure_consumer(store, clock, consumer_id, plan, default_plan)
    client_id, secret = new_client_credentials()
    secret_hash, version = peppers.hash(secret)
    record = ClientRecord(
        client_id=client_id,
        consumer_id=consumer_id,
        secret_hash=secret_hash,
        pepper_version=version,
        scopes=tuple(sorted(set(scopes))),
        created_at=clock.wall(),
    )
    await store.add_client(record)
    return CreatedClient(record, secret)
