"""One behaviour suite for every ``CredentialStore``, then what only one backend has.

The parametrised tests run against ``SqliteCredentialStore`` (a file under tmp_path)
and ``RedisCredentialStore`` (the shared test server, a unique key prefix per test), so
the two cannot drift apart. ``new_store`` builds another store object over the same
data, as a restarted gateway or the ``gateway keys`` CLI would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.stores.base import (
    ApiKeyRecord,
    ClientRecord,
    ConsumerRecord,
    CredentialStore,
    SigningKeyRecord,
    StoreError,
)
from gateway.stores.redis import RedisCredentialStore
from gateway.stores.sqlite import SqliteCredentialStore
from tests.redis_server import RedisServer

T0 = 1_700_000_000.123456
PEM = (
    b"-----BEGIN PRIVATE KEY-----\n"
    b"MC4CAQAwBQYDK2VwBCIEIBf2M8lXz3X0Cw0yN1o0n0Y5n3aT1k7Vd2l8f0bqv8mQ\n"
    b"-----END PRIVATE KEY-----\n"
    # Not PEM, but proves the bytes come back exactly, whatever they are.
    b"\x00\xff\xfe\r\n"
)

StoreFactory = Callable[[], CredentialStore]
OpenStore = Callable[[], Awaitable[CredentialStore]]


def api_key(key_id: str, consumer_id: str = "acme", created_at: float = T0) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=key_id,
        consumer_id=consumer_id,
        secret_hash="h" * 64,
        pepper_version=1,
        scopes=("orders:read",),
        created_at=created_at,
    )


def client(client_id: str, created_at: float = T0) -> ClientRecord:
    return ClientRecord(
        client_id=client_id,
        consumer_id="acme",
        secret_hash="c" * 64,
        pepper_version=1,
        scopes=("orders:read", "orders:write"),
        created_at=created_at,
    )


def signing_key(kid: str, created_at: float = T0) -> SigningKeyRecord:
    return SigningKeyRecord(kid=kid, algorithm="EdDSA", private_pem=PEM, created_at=created_at)


@pytest.fixture(params=["sqlite", "redis"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds unopened store objects that all share one backing file or key prefix."""
    if request.param == "sqlite":
        path = tmp_path / "var" / "credentials.db"
        return lambda: SqliteCredentialStore(path)
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    return lambda: RedisCredentialStore(url, prefix=prefix)


@pytest.fixture
async def open_store(new_store: StoreFactory) -> AsyncIterator[OpenStore]:
    """Opens a new store object over the shared data; all are closed at teardown."""
    opened: list[CredentialStore] = []

    async def open_one() -> CredentialStore:
        store = new_store()
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: OpenStore) -> CredentialStore:
    return await open_store()


# round trips


async def test_consumer_round_trip_and_upsert_updates_plan(store: CredentialStore) -> None:
    await store.upsert_consumer(ConsumerRecord("acme", "free", T0))
    assert await store.get_consumer("acme") == ConsumerRecord("acme", "free", T0)

    await store.upsert_consumer(ConsumerRecord("acme", "pro", T0 + 50))

    # The plan changes; the consumer is still as old as it was.
    assert await store.get_consumer("acme") == ConsumerRecord("acme", "pro", T0)
    assert await store.list_consumers() == [ConsumerRecord("acme", "pro", T0)]


async def test_api_key_round_trip_with_every_field(store: CredentialStore) -> None:
    full = ApiKeyRecord(
        key_id="k_full",
        consumer_id="acme",
        secret_hash="a1" * 32,
        pepper_version=3,
        scopes=("orders:read", "orders:write", "users:*"),
        created_at=T0,
        expires_at=T0 + 86_400.5,
        revoked_at=T0 + 10.25,
        last_used_at=T0 + 5.125,
        rotated_from="k_old",
    )
    bare = ApiKeyRecord(
        key_id="k_bare",
        consumer_id="acme",
        secret_hash="b2" * 32,
        pepper_version=1,
        scopes=(),
        created_at=T0 + 1,
    )
    await store.add_api_key(full)
    await store.add_api_key(bare)

    assert await store.get_api_key("k_full") == full
    got = await store.get_api_key("k_bare")
    assert got == bare
    assert got is not None
    assert got.scopes == ()
    assert (got.expires_at, got.revoked_at, got.last_used_at, got.rotated_from) == (None,) * 4


async def test_client_round_trip_with_every_field(store: CredentialStore) -> None:
    revoked = ClientRecord(
        client_id="svc-billing",
        consumer_id="acme",
        secret_hash="d4" * 32,
        pepper_version=2,
        scopes=("invoices:read",),
        created_at=T0,
        revoked_at=T0 + 3.5,
    )
    await store.add_client(revoked)
    await store.add_client(client("svc-live"))

    assert await store.get_client("svc-billing") == revoked
    assert await store.get_client("svc-live") == client("svc-live")


async def test_signing_key_round_trip_keeps_pem_bytes(store: CredentialStore) -> None:
    retired = SigningKeyRecord(
        kid="2024-01",
        algorithm="ES256",
        private_pem=PEM,
        created_at=T0,
        retired_at=T0 + 100.5,
        publish_until=T0 + 3700.75,
    )
    await store.add_signing_key(retired)
    await store.add_signing_key(signing_key("2024-02", T0 + 1))

    keys = await store.list_signing_keys()

    assert keys == [retired, signing_key("2024-02", T0 + 1)]
    assert all(type(k.private_pem) is bytes and k.private_pem == PEM for k in keys)


async def test_unknown_ids_are_none(store: CredentialStore) -> None:
    assert await store.get_consumer("nobody") is None
    assert await store.get_api_key("k_nope") is None
    assert await store.get_client("nope") is None
    assert await store.list_consumers() == []
    assert await store.list_api_keys() == []
    assert await store.list_api_keys("nobody") == []
    assert await store.list_clients() == []
    assert await store.list_signing_keys() == []


async def test_duplicate_ids_are_refused(store: CredentialStore) -> None:
    await store.add_api_key(api_key("k1"))
    await store.add_client(client("c1"))
    await store.add_signing_key(signing_key("s1"))

    with pytest.raises(ValueError, match="k1"):
        await store.add_api_key(api_key("k1", consumer_id="other", created_at=T0 + 9))
    with pytest.raises(ValueError, match="c1"):
        await store.add_client(client("c1", created_at=T0 + 9))
    with pytest.raises(ValueError, match="s1"):
        await store.add_signing_key(signing_key("s1", created_at=T0 + 9))

    # The originals stand, and the refused key did not reach the other consumer's index.
    assert await store.get_api_key("k1") == api_key("k1")
    assert await store.list_api_keys("other") == []
    assert await store.list_clients() == [client("c1")]
    assert await store.list_signing_keys() == [signing_key("s1")]


# lists


async def test_lists_are_oldest_first_and_api_keys_filter_by_consumer(
    store: CredentialStore,
) -> None:
    await store.add_api_key(api_key("k_c", "acme", T0 + 2))
    await store.add_api_key(api_key("k_a", "acme", T0))
    await store.add_api_key(api_key("k_b", "globex", T0 + 1))
    await store.add_api_key(api_key("k_0", "acme", T0 + 2))  # same time: by id
    await store.add_client(client("c_new", T0 + 1))
    await store.add_client(client("c_old", T0))
    await store.upsert_consumer(ConsumerRecord("globex", "pro", T0 + 1))
    await store.upsert_consumer(ConsumerRecord("acme", "free", T0))

    assert [k.key_id for k in await store.list_api_keys()] == ["k_a", "k_b", "k_0", "k_c"]
    assert [k.key_id for k in await store.list_api_keys("acme")] == ["k_a", "k_0", "k_c"]
    assert [k.key_id for k in await store.list_api_keys("globex")] == ["k_b"]
    assert [c.client_id for c in await store.list_clients()] == ["c_old", "c_new"]
    assert [c.id for c in await store.list_consumers()] == ["acme", "globex"]


async def test_signing_keys_are_listed_oldest_first(store: CredentialStore) -> None:
    for kid, at in [("k3", T0 + 30), ("k1", T0 + 10), ("k2b", T0 + 20), ("k2a", T0 + 20)]:
        await store.add_signing_key(signing_key(kid, at))

    assert [k.kid for k in await store.list_signing_keys()] == ["k1", "k2a", "k2b", "k3"]


# updates


async def test_revoke_api_key_succeeds_once(store: CredentialStore) -> None:
    await store.add_api_key(api_key("k1"))

    assert await store.revoke_api_key("k1", T0 + 1) is True
    assert await store.revoke_api_key("k1", T0 + 2) is False
    assert await store.revoke_api_key("k_unknown", T0) is False

    got = await store.get_api_key("k1")
    assert got is not None
    assert got.revoked_at == T0 + 1
    assert await store.get_api_key("k_unknown") is None


async def test_revoke_client_succeeds_once(store: CredentialStore) -> None:
    await store.add_client(client("c1"))

    assert await store.revoke_client("c1", T0 + 1) is True
    assert await store.revoke_client("c1", T0 + 2) is False
    assert await store.revoke_client("c_unknown", T0) is False

    got = await store.get_client("c1")
    assert got is not None
    assert got.revoked_at == T0 + 1


async def test_concurrent_revokes_have_exactly_one_winner(open_store: OpenStore) -> None:
    # Two store objects, as two nodes (or the gateway and the CLI) would have.
    first, second = await open_store(), await open_store()
    await first.add_api_key(api_key("k1"))

    results = await asyncio.gather(
        *((first if i % 2 else second).revoke_api_key("k1", T0 + i) for i in range(20))
    )

    assert results.count(True) == 1
    got = await first.get_api_key("k1")
    assert got is not None
    assert got.revoked_at == T0 + results.index(True)


async def test_set_api_key_expiry(store: CredentialStore) -> None:
    await store.add_api_key(api_key("k1"))

    assert await store.set_api_key_expiry("k1", T0 + 60) is True
    got = await store.get_api_key("k1")
    assert got is not None
    assert got.expires_at == T0 + 60

    assert await store.set_api_key_expiry("k1", None) is True
    got = await store.get_api_key("k1")
    assert got == api_key("k1")

    assert await store.set_api_key_expiry("k_unknown", T0) is False
    assert await store.get_api_key("k_unknown") is None


async def test_touch_api_keys_updates_in_one_batch(store: CredentialStore) -> None:
    for key_id in ("k1", "k2", "k3"):
        await store.add_api_key(api_key(key_id))

    await store.touch_api_keys({})
    await store.touch_api_keys({"k1": T0 + 1.5, "k2": T0 + 2.5, "k_unknown": T0})

    used = {k.key_id: k.last_used_at for k in await store.list_api_keys()}
    assert used == {"k1": T0 + 1.5, "k2": T0 + 2.5, "k3": None}
    assert await store.get_api_key("k_unknown") is None

    # A late or retried batch never moves a time backwards.
    await store.touch_api_keys({"k1": T0 + 0.5, "k2": T0 + 9})
    used = {k.key_id: k.last_used_at for k in await store.list_api_keys()}
    assert used == {"k1": T0 + 1.5, "k2": T0 + 9, "k3": None}


async def test_touch_api_keys_takes_large_batches(store: CredentialStore) -> None:
    for i in range(3):
        await store.add_api_key(api_key(f"k{i}"))
    batch = {f"k{i}": T0 + i for i in range(1200)}  # mostly unknown ids

    await store.touch_api_keys(batch)

    assert [k.last_used_at for k in await store.list_api_keys()] == [T0, T0 + 1, T0 + 2]


async def test_retire_signing_key(store: CredentialStore) -> None:
    await store.add_signing_key(signing_key("s1"))

    assert await store.retire_signing_key("s1", T0 + 10, T0 + 3610) is True
    assert await store.retire_signing_key("s1", T0 + 20, T0 + 3620) is False
    assert await store.retire_signing_key("s_unknown", T0, T0) is False

    [got] = await store.list_signing_keys()
    assert (got.retired_at, got.publish_until) == (T0 + 10, T0 + 3610)
    assert got.private_pem == PEM


async def test_delete_signing_key(store: CredentialStore) -> None:
    await store.add_signing_key(signing_key("s1", T0))
    await store.add_signing_key(signing_key("s2", T0 + 1))

    assert await store.delete_signing_key("s1") is True
    assert await store.delete_signing_key("s1") is False
    assert await store.delete_signing_key("s_unknown") is False
    assert [k.kid for k in await store.list_signing_keys()] == ["s2"]

    # The id is free again.
    await store.add_signing_key(signing_key("s1", T0 + 2))
    assert [k.kid for k in await store.list_signing_keys()] == ["s2", "s1"]


# lifecycle


async def test_data_survives_a_restart(new_store: StoreFactory) -> None:
    first = new_store()
    await first.open()
    await first.upsert_consumer(ConsumerRecord("acme", "pro", T0))
    await first.add_api_key(api_key("k1"))
    await first.revoke_api_key("k1", T0 + 1)
    await first.touch_api_keys({"k1": T0 + 0.5})
    await first.add_client(client("c1"))
    await first.add_signing_key(signing_key("s1"))
    await first.close()

    second = new_store()
    await second.open()
    try:
        assert await second.get_consumer("acme") == ConsumerRecord("acme", "pro", T0)
        got = await second.get_api_key("k1")
        assert got is not None
        assert (got.revoked_at, got.last_used_at) == (T0 + 1, T0 + 0.5)
        assert await second.list_api_keys("acme") == [got]
        assert await second.get_client("c1") == client("c1")
        assert await second.list_signing_keys() == [signing_key("s1")]
        # Opening again (schema already there) is harmless, and the data still works.
        await second.add_api_key(api_key("k2", created_at=T0 + 1))
    finally:
        await second.close()


async def test_store_objects_see_each_others_writes(open_store: OpenStore) -> None:
    gateway, cli = await open_store(), await open_store()

    await cli.add_api_key(api_key("k1"))
    assert await gateway.get_api_key("k1") == api_key("k1")
    assert await gateway.revoke_api_key("k1", T0 + 1) is True
    assert await cli.revoke_api_key("k1", T0 + 2) is False


async def test_open_and_close_are_idempotent_and_closed_store_refuses(
    new_store: StoreFactory,
) -> None:
    store = new_store()
    await store.open()
    await store.open()
    await store.add_api_key(api_key("k1"))
    await store.close()
    await store.close()

    with pytest.raises(StoreError, match="not open"):
        await store.get_api_key("k1")
    with pytest.raises(StoreError, match="not open"):
        await store.revoke_api_key("k1", T0)


# SQLite only


async def test_sqlite_file_is_owner_only_and_folder_mode_kept(tmp_path: Path) -> None:
    folder = tmp_path / "var"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    path = folder / "credentials.db"

    async with SqliteCredentialStore(path) as store:
        await store.add_signing_key(signing_key("s1"))  # a write creates the -wal file
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = path.with_name(path.name + "-wal")
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600

    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


async def test_sqlite_creates_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "credentials.db"

    async with SqliteCredentialStore(str(path)) as store:
        await store.upsert_consumer(ConsumerRecord("acme", "free", T0))

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_sqlite_settings_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "credentials.db"
    async with SqliteCredentialStore(path):
        pass
    async with SqliteCredentialStore(path):  # a second open must not add a version row
        pass

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    db.close()


async def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "credentials.db"
    async with SqliteCredentialStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 2")
    db.close()

    with pytest.raises(StoreError, match="schema version 2"):
        await SqliteCredentialStore(path).open()


async def test_sqlite_unreadable_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "credentials.db"
    path.write_bytes(b"this is not a database, just some text " * 100)

    with pytest.raises(StoreError) as caught:
        await SqliteCredentialStore(path).open()

    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


async def test_sqlite_lock_held_too_long_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "credentials.db"
    async with SqliteCredentialStore(path, busy_timeout=0.1) as store:
        await store.add_api_key(api_key("k1"))
        # Another process (the CLI, say) holds the write lock and does not let go.
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="locked") as caught:
                await store.revoke_api_key("k1", T0)
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            # Readers are not blocked in WAL mode.
            assert await store.get_api_key("k1") == api_key("k1")
        finally:
            other.rollback()
            other.close()
        assert await store.revoke_api_key("k1", T0) is True


# Redis only


async def test_redis_layout(redis_url: str) -> None:
    prefix = "gw:cred:"
    async with RedisCredentialStore(redis_url) as store:
        await store.upsert_consumer(ConsumerRecord("acme", "free", T0))
        await store.add_api_key(api_key("k1"))
        await store.add_client(client("c1"))
        await store.add_signing_key(signing_key("s1"))

    redis = Redis.from_url(redis_url)
    try:
        types = {key: await redis.type(key) for key in await redis.keys()}
        assert types == {
            f"{prefix}schema".encode(): b"string",
            f"{prefix}consumer:acme".encode(): b"hash",
            f"{prefix}consumers".encode(): b"set",
            f"{prefix}apikey:k1".encode(): b"hash",
            f"{prefix}apikeys".encode(): b"set",
            f"{prefix}apikeys:consumer:acme".encode(): b"set",
            f"{prefix}client:c1".encode(): b"hash",
            f"{prefix}clients".encode(): b"set",
            f"{prefix}signingkey:s1".encode(): b"hash",
            f"{prefix}signingkeys".encode(): b"zset",
        }
        # None fields are absent, not stored as placeholders.
        assert set(await redis.hkeys(f"{prefix}apikey:k1")) == {
            b"key_id",
            b"consumer_id",
            b"secret_hash",
            b"pepper_version",
            b"scopes",
            b"created_at",
        }
        assert await redis.hget(f"{prefix}signingkey:s1", "private_pem") == PEM
    finally:
        await redis.aclose()


async def test_redis_prefixes_keep_stores_apart(redis_url: str) -> None:
    async with (
        RedisCredentialStore(redis_url, prefix="one:") as one,
        RedisCredentialStore(redis_url, prefix="two:") as two,
    ):
        await one.add_api_key(api_key("k1"))
        await two.add_api_key(api_key("k1", consumer_id="other"))

        assert await one.list_api_keys() == [api_key("k1")]
        assert await two.list_api_keys() == [api_key("k1", consumer_id="other")]


async def test_redis_malformed_record_is_a_store_error(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.hset("gw:cred:apikey:k1", mapping={"key_id": "k1", "created_at": "soon"})
    finally:
        await redis.aclose()

    async with RedisCredentialStore(redis_url) as store:
        with pytest.raises(StoreError, match="malformed"):
            await store.get_api_key("k1")


async def test_redis_newer_layout_is_refused(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await redis.set("gw:cred:schema", "2")
    finally:
        await redis.aclose()

    with pytest.raises(StoreError, match="layout version 2"):
        await RedisCredentialStore(redis_url).open()


async def test_redis_outage_is_a_store_error_and_the_store_recovers(
    private_redis_server: RedisServer,
) -> None:
    async with RedisCredentialStore(private_redis_server.url, socket_timeout=0.5) as store:
        await store.add_api_key(api_key("k1"))

        await private_redis_server.astop()
        with pytest.raises(StoreError) as caught:
            await store.get_api_key("k1")
        assert not isinstance(caught.value, ValueError)
        with pytest.raises(StoreError):
            await store.revoke_api_key("k1", T0)
        with pytest.raises(StoreError):
            await store.list_api_keys()

        await private_redis_server.astart()
        # Same object, same URL: it reconnects (the restarted server starts empty).
        assert await store.get_api_key("k1") is None
        await store.add_api_key(api_key("k1"))
        assert await store.revoke_api_key("k1", T0) is True


async def test_redis_unreachable_at_open_is_a_store_error(
    private_redis_server: RedisServer,
) -> None:
    await private_redis_server.astop()
    store = RedisCredentialStore(private_redis_server.url, connect_timeout=0.5)

    with pytest.raises(StoreError, match="connecting"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.get_api_key("k1")
