"""``CredentialStore`` in Redis: one store shared by every gateway node.

Layout, every key under a configurable prefix (default ``gw:cred:``)::

    {prefix}schema                          string  layout version ("1")
    {prefix}consumer:{id}                   hash    id, plan, created_at
    {prefix}consumers                       set     consumer ids
    {prefix}apikey:{key_id}                 hash    the ApiKeyRecord fields
    {prefix}apikeys                         set     key ids
    {prefix}apikeys:consumer:{consumer_id}  set     key ids of one consumer
    {prefix}client:{client_id}              hash    the ClientRecord fields
    {prefix}clients                         set     client ids
    {prefix}signingkey:{kid}                hash    the SigningKeyRecord fields
    {prefix}signingkeys                     zset    kids scored by created_at

A field that is ``None`` is absent from its hash, so "set once" checks are HEXISTS.
Floats are written as ``repr(float)`` (which round-trips exactly), scopes as a JSON
array, ``private_pem`` as raw bytes: the client runs with ``decode_responses=False``
and text fields are decoded here, so the PEM comes back byte for byte.

Every write that touches more than one key, or must not happen twice, is a small Lua
script, which Redis runs atomically: ``add_*`` creates the hash and its index entries
only if the hash does not exist (a duplicate id is refused even when two nodes race),
and ``revoke_*`` / ``retire_signing_key`` set their timestamp only while it is absent,
so among concurrent callers exactly one is told True. Scripts name every key they touch
in KEYS, as Redis requires of scripts (with a hash-tagged prefix such as ``{gw:cred}:``
all keys would share one cluster slot; this client itself is not a cluster client).

Lists read the index, then every hash in one pipelined round trip, oldest first with
ties broken by id (the same order as ``SqliteCredentialStore``).

Failures (unreachable server, timeouts, error replies, a malformed record) surface as
``StoreError``. The client retries only on connection errors (mostly a pooled
connection that died while idle), a few times with short backoff: a request path must
fail fast while Redis is down, and a timed-out write may have run already, so it is not
replayed blindly.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Self, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .base import ApiKeyRecord, ClientRecord, ConsumerRecord, SigningKeyRecord, StoreError

log = logging.getLogger("gateway.credentials")

SCHEMA_VERSION = 1

# KEYS[1] the record's hash, KEYS[2..] sets that index it.
# ARGV[1] the id added to those sets, ARGV[2..] field/value pairs.
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
for i = 2, #KEYS do redis.call('SADD', KEYS[i], ARGV[1]) end
return 1
"""

# As _ADD, with KEYS[2] a sorted set and ARGV[2] the score.
_ADD_SCORED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS[1] a hash; ARGV[1] a field that must be absent; ARGV[2..] field/value pairs.
_SET_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

# KEYS[1] a hash; ARGV[1] a field, ARGV[2] its value ("" removes it).
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""

# KEYS api key hashes, ARGV their last-use times; a time never moves backwards and an
# unknown key is not created.
_TOUCH = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local current = tonumber(redis.call('HGET', key, 'last_used_at'))
    if current == nil or current < tonumber(ARGV[i]) then
      redis.call('HSET', key, 'last_used_at', ARGV[i])
    end
  end
end
return 0
"""

# KEYS[1] hash, KEYS[2] its sorted-set index, ARGV[1] the member.
_DELETE_SCORED = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS[1] hash, KEYS[2] index; ARGV id, plan, created_at. An existing consumer keeps
# its created_at: only the plan is updated.
_UPSERT_CONSUMER = """
redis.call('HSETNX', KEYS[1], 'id', ARGV[1])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[3])
redis.call('HSET', KEYS[1], 'plan', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# Batches of last-use times are split so that one script never holds Redis for long.
_TOUCH_CHUNK = 500

_Value: TypeAlias = str | bytes
_Fields: TypeAlias = dict[str, bytes]


def _num(value: float) -> str:
    return repr(float(value))


def _pairs(fields: Mapping[str, _Value | float | None]) -> list[_Value]:
    """Field/value pairs for HSET, leaving out None (an absent field means None)."""
    out: list[_Value] = []
    for name, value in fields.items():
        if value is None:
            continue
        out.append(name)
        out.append(_num(value) if isinstance(value, float | int) else value)
    return out


def _fields(raw: Mapping[bytes | str, bytes | str]) -> _Fields:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v if isinstance(v, bytes) else v.encode())
        for k, v in raw.items()
    }


class _Reader:
    """Typed access to one hash, turning a missing or garbled field into StoreError."""

    def __init__(self, key: str, fields: _Fields) -> None:
        self.key = key
        self.fields = fields

    def raw(self, name: str) -> bytes:
        try:
            return self.fields[name]
        except KeyError:
            raise StoreError(f"malformed record {self.key!r}: no field {name!r}") from None

    def text(self, name: str) -> str:
        try:
            return self.raw(name).decode()
        except UnicodeDecodeError as exc:
            raise StoreError(f"malformed record {self.key!r}: field {name!r}") from exc

    def optional_text(self, name: str) -> str | None:
        return self.text(name) if name in self.fields else None

    def integer(self, name: str) -> int:
        try:
            return int(self.raw(name))
        except ValueError as exc:
            raise StoreError(f"malformed record {self.key!r}: field {name!r}") from exc

    def number(self, name: str) -> float:
        try:
            return float(self.raw(name))
        except ValueError as exc:
            raise StoreError(f"malformed record {self.key!r}: field {name!r}") from exc

    def optional_number(self, name: str) -> float | None:
        return self.number(name) if name in self.fields else None

    def scopes(self) -> tuple[str, ...]:
        try:
            value = json.loads(self.raw("scopes"))
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise StoreError(f"malformed record {self.key!r}: field 'scopes'")
        return tuple(value)


def _consumer(r: _Reader) -> ConsumerRecord:
    return ConsumerRecord(id=r.text("id"), plan=r.text("plan"), created_at=r.number("created_at"))


def _api_key(r: _Reader) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=r.text("key_id"),
        consumer_id=r.text("consumer_id"),
        secret_hash=r.text("secret_hash"),
        pepper_version=r.integer("pepper_version"),
        scopes=r.scopes(),
        created_at=r.number("created_at"),
        expires_at=r.optional_number("expires_at"),
        revoked_at=r.optional_number("revoked_at"),
        last_used_at=r.optional_number("last_used_at"),
        rotated_from=r.optional_text("rotated_from"),
    )


def _client(r: _Reader) -> ClientRecord:
    return ClientRecord(
        client_id=r.text("client_id"),
        consumer_id=r.text("consumer_id"),
        secret_hash=r.text("secret_hash"),
        pepper_version=r.integer("pepper_version"),
        scopes=r.scopes(),
        created_at=r.number("created_at"),
        revoked_at=r.optional_number("revoked_at"),
    )


def _signing_key(r: _Reader) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=r.text("kid"),
        algorithm=r.text("algorithm"),
        private_pem=r.raw("private_pem"),
        created_at=r.number("created_at"),
        retired_at=r.optional_number("retired_at"),
        publish_until=r.optional_number("publish_until"),
    )


def _member(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise StoreError(f"redis credential store: unexpected index member {value!r}")


@contextlib.contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreError(f"redis credential store: {what} failed: {exc}") from exc


class RedisCredentialStore:
    """Credentials in the Redis database at ``url`` (``redis://``, ``rediss://`` or
    ``unix://``), every key under ``prefix``.

    ``socket_timeout`` bounds each command and ``connect_timeout`` each connection
    attempt (seconds); ``retries`` is how many times a command is tried again after a
    connection error.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gw:cred:",
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        retries: int = 2,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._retries = retries
        self._redis: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # lifecycle

    async def open(self) -> None:
        if self._redis is not None:
            return
        retry = Retry(
            ExponentialWithJitterBackoff(base=0.02, cap=0.2),
            retries=self._retries,
            supported_errors=(RedisConnectionError,),
        )
        try:
            client = Redis.from_url(
                self.url,
                decode_responses=False,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._connect_timeout,
                retry=retry,
            )
        except ValueError as exc:  # a malformed URL
            raise StoreError(f"bad Redis URL for the credential store: {exc}") from exc
        self._scripts.clear()
        try:
            with _redis_errors("connecting"):
                schema = self.prefix + "schema"
                await client.set(schema, str(SCHEMA_VERSION), nx=True)
                found = await client.get(schema)
            if found is None or not found.isdigit():
                raise StoreError(f"redis credential store: malformed {schema!r}: {found!r}")
            if int(found) > SCHEMA_VERSION:
                raise StoreError(
                    f"redis credential store under {self.prefix!r} has layout version"
                    f" {int(found)}; this gateway knows versions up to {SCHEMA_VERSION}"
                )
        except BaseException:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
            raise
        self._redis = client

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            with _redis_errors("closing"):
                await client.aclose()

    # plumbing

    @property
    def _client(self) -> Redis:
        if self._redis is None:
            raise StoreError("the Redis credential store is not open")
        return self._redis

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _get(self, key: str) -> _Reader | None:
        with _redis_errors("read"):
            raw = await self._client.hgetall(key)
        return _Reader(key, _fields(raw)) if raw else None

    async def _get_many(self, keys: Sequence[str]) -> list[_Reader]:
        """The hashes that exist, in the order of ``keys``."""
        if not keys:
            return []
        with _redis_errors("read"):
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                results = await pipe.execute()
        return [_Reader(key, _fields(raw)) for key, raw in zip(keys, results, strict=True) if raw]

    async def _members(self, index: str) -> list[str]:
        with _redis_errors("read"):
            members = await self._client.smembers(index)
        return [_member(m) for m in members]

    async def _run(
        self, what: str, source: str, keys: Sequence[str], args: Iterable[_Value]
    ) -> bool:
        """Run one of the scripts above; True when it answered 1."""
        client = self._client
        script = self._scripts.get(source)
        if script is None:
            # Registering only hashes the source; Redis loads it on first use (and again
            # after a restart emptied its script cache).
            script = self._scripts[source] = client.register_script(source)
        with _redis_errors(what):
            result = await script(keys=keys, args=list(args))
        return bool(int(result))

    # consumers

    async def upsert_consumer(self, consumer: ConsumerRecord) -> None:
        await self._run(
            "upsert_consumer",
            _UPSERT_CONSUMER,
            [self._key("consumer", consumer.id), self._key("consumers")],
            [consumer.id, consumer.plan, _num(consumer.created_at)],
        )

    async def get_consumer(self, consumer_id: str) -> ConsumerRecord | None:
        found = await self._get(self._key("consumer", consumer_id))
        return _consumer(found) if found else None

    async def list_consumers(self) -> list[ConsumerRecord]:
        ids = await self._members(self._key("consumers"))
        found = await self._get_many([self._key("consumer", i) for i in ids])
        records = [_consumer(r) for r in found]
        return sorted(records, key=lambda c: (c.created_at, c.id))

    # API keys

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        added = await self._run(
            "add_api_key",
            _ADD,
            [
                self._key("apikey", record.key_id),
                self._key("apikeys"),
                self._key("apikeys", "consumer", record.consumer_id),
            ],
            [
                record.key_id,
                *_pairs(
                    {
                        "key_id": record.key_id,
                        "consumer_id": record.consumer_id,
                        "secret_hash": record.secret_hash,
                        "pepper_version": str(record.pepper_version),
                        "scopes": json.dumps(list(record.scopes)),
                        "created_at": record.created_at,
                        "expires_at": record.expires_at,
                        "revoked_at": record.revoked_at,
                        "last_used_at": record.last_used_at,
                        "rotated_from": record.rotated_from,
                    }
                ),
            ],
        )
        if not added:
            raise ValueError(f"API key {record.key_id!r} exists already")

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        found = await self._get(self._key("apikey", key_id))
        return _api_key(found) if found else None

    async def list_api_keys(self, consumer_id: str | None = None) -> list[ApiKeyRecord]:
        if consumer_id is None:
            index = self._key("apikeys")
        else:
            index = self._key("apikeys", "consumer", consumer_id)
        ids = await self._members(index)
        found = await self._get_many([self._key("apikey", i) for i in ids])
        records = [_api_key(r) for r in found]
        return sorted(records, key=lambda k: (k.created_at, k.key_id))

    async def set_api_key_expiry(self, key_id: str, expires_at: float | None) -> bool:
        changed = await self._run(
            "set_api_key_expiry",
            _SET_IF_EXISTS,
            [self._key("apikey", key_id)],
            ["expires_at", "" if expires_at is None else _num(expires_at)],
        )
        if changed:
            await self._announce_key_change(key_id)
        return changed

    async def revoke_api_key(self, key_id: str, at: float) -> bool:
        changed = await self._run(
            "revoke_api_key",
            _SET_ONCE,
            [self._key("apikey", key_id)],
            ["revoked_at", "revoked_at", _num(at)],
        )
        if changed:
            await self._announce_key_change(key_id)
        return changed

    @property
    def key_changes_channel(self) -> str:
        """Where a revoked or re-dated API key's id is published: every gateway on this
        store drops the key from its caches at once, whoever changed it (a node's
        admin API or the CLI)."""
        return self.prefix + "key-changes"

    async def _announce_key_change(self, key_id: str) -> None:
        # Best effort: the change is stored, and a node that misses the message reads
        # the key again within its cache_ttl.
        try:
            await self._client.publish(self.key_changes_channel, key_id.encode())
        except (RedisError, OSError) as exc:
            log.warning("API key change not announced to other nodes (%s)", exc)

    async def touch_api_keys(self, last_used: dict[str, float]) -> None:
        """Unknown ids are ignored; a time never moves backwards (batches from several
        nodes, or a batch retried after a failure, may arrive out of order)."""
        items = list(last_used.items())
        for start in range(0, len(items), _TOUCH_CHUNK):
            chunk = items[start : start + _TOUCH_CHUNK]
            await self._run(
                "touch_api_keys",
                _TOUCH,
                [self._key("apikey", key_id) for key_id, _ in chunk],
                [_num(at) for _, at in chunk],
            )

    # OAuth clients

    async def add_client(self, record: ClientRecord) -> None:
        added = await self._run(
            "add_client",
            _ADD,
            [self._key("client", record.client_id), self._key("clients")],
            [
                record.client_id,
                *_pairs(
                    {
                        "client_id": record.client_id,
                        "consumer_id": record.consumer_id,
                        "secret_hash": record.secret_hash,
                        "pepper_version": str(record.pepper_version),
                        "scopes": json.dumps(list(record.scopes)),
                        "created_at": record.created_at,
                        "revoked_at": record.revoked_at,
                    }
                ),
            ],
        )
        if not added:
            raise ValueError(f"client {record.client_id!r} exists already")

    async def get_client(self, client_id: str) -> ClientRecord | None:
        found = await self._get(self._key("client", client_id))
        return _client(found) if found else None

    async def list_clients(self) -> list[ClientRecord]:
        ids = await self._members(self._key("clients"))
        found = await self._get_many([self._key("client", i) for i in ids])
        records = [_client(r) for r in found]
        return sorted(records, key=lambda c: (c.created_at, c.client_id))

    async def revoke_client(self, client_id: str, at: float) -> bool:
        return await self._run(
            "revoke_client",
            _SET_ONCE,
            [self._key("client", client_id)],
            ["revoked_at", "revoked_at", _num(at)],
        )

    # signing keys

    async def add_signing_key(self, record: SigningKeyRecord) -> None:
        added = await self._run(
            "add_signing_key",
            _ADD_SCORED,
            [self._key("signingkey", record.kid), self._key("signingkeys")],
            [
                record.kid,
                _num(record.created_at),
                *_pairs(
                    {
                        "kid": record.kid,
                        "algorithm": record.algorithm,
                        "private_pem": record.private_pem,
                        "created_at": record.created_at,
                        "retired_at": record.retired_at,
                        "publish_until": record.publish_until,
                    }
                ),
            ],
        )
        if not added:
            raise ValueError(f"signing key {record.kid!r} exists already")

    async def list_signing_keys(self) -> list[SigningKeyRecord]:
        # ZRANGE orders by score, then by member bytes: the same as ORDER BY created_at, kid.
        with _redis_errors("read"):
            kids = await self._client.zrange(self._key("signingkeys"), 0, -1)
        keys = [self._key("signingkey", _member(k)) for k in kids]
        return [_signing_key(r) for r in await self._get_many(keys)]

    async def retire_signing_key(self, kid: str, at: float, publish_until: float) -> bool:
        """True when an active key was retired; False when unknown or retired already."""
        return await self._run(
            "retire_signing_key",
            _SET_ONCE,
            [self._key("signingkey", kid)],
            ["retired_at", "retired_at", _num(at), "publish_until", _num(publish_until)],
        )

    async def delete_signing_key(self, kid: str) -> bool:
        return await self._run(
            "delete_signing_key",
            _DELETE_SCORED,
            [self._key("signingkey", kid), self._key("signingkeys")],
            [kid],
        )
