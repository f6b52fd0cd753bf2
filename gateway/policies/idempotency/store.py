"""Where idempotency records live: this process (``memory``) or Redis (every node).

A record is first a *lock* (the request is in flight, with the fingerprint of the
request that took it) that expires on its own after the route's deadline plus a margin,
so a node that dies holding it does not block the key forever; then, once answered,
the stored *response*, kept for the record TTL. ``begin`` is atomic: of two requests
with one key at the same moment, exactly one gets ``new``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ...context import Clock
from ...stores.base import StoreError


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Begun:
    state: Literal["new", "in_flight", "done"]
    fingerprint: str
    response: StoredResponse | None = None


class IdempotencyStore(Protocol):
    async def begin(self, key: str, fingerprint: str, lock_ttl: float) -> Begun: ...
    async def finish(
        self, key: str, fingerprint: str, response: StoredResponse, ttl: float
    ) -> None: ...
    async def abandon(self, key: str, fingerprint: str) -> None: ...
    async def close(self) -> None: ...


class MemoryIdempotencyStore:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._records: dict[str, tuple[Begun, float]] = {}

    def _live(self, key: str) -> Begun | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock.monotonic():
            del self._records[key]
            return None
        return entry[0]

    async def begin(self, key: str, fingerprint: str, lock_ttl: float) -> Begun:
        existing = self._live(key)
        if existing is not None:
            return existing
        if len(self._records) > 100_000:
            self._sweep()
        self._records[key] = (Begun("in_flight", fingerprint), self._clock.monotonic() + lock_ttl)
        return Begun("new", fingerprint)

    async def finish(
        self, key: str, fingerprint: str, response: StoredResponse, ttl: float
    ) -> None:
        self._records[key] = (Begun("done", fingerprint, response), self._clock.monotonic() + ttl)

    async def abandon(self, key: str, fingerprint: str) -> None:
        existing = self._live(key)
        if (
            existing is not None
            and existing.state == "in_flight"
            and existing.fingerprint == fingerprint
        ):
            del self._records[key]

    def _sweep(self) -> None:
        now = self._clock.monotonic()
        for key in [k for k, (_, until) in self._records.items() if until <= now]:
            del self._records[key]

    async def close(self) -> None:
        self._records.clear()


# Take the lock if the key is free; otherwise return what is there. Atomic.
_BEGIN = """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# Release a lock only if it is still ours (same fingerprint, still in flight).
_ABANDON = """
local existing = redis.call('GET', KEYS[1])
if existing and existing == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisIdempotencyStore:
    def __init__(self, url: str, timeout: float, prefix: str = "gw:idem:") -> None:
        self._redis = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix
        self._begin = self._redis.register_script(_BEGIN)
        self._abandon = self._redis.register_script(_ABANDON)

    async def begin(self, key: str, fingerprint: str, lock_ttl: float) -> Begun:
        lock = orjson.dumps({"state": "in_flight", "fp": fingerprint})
        try:
            raw = await self._begin(keys=[self._prefix + key], args=[lock, int(lock_ttl * 1000)])
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc
        if raw is None:
            return Begun("new", fingerprint)
        record = orjson.loads(raw)
        if record["state"] == "in_flight":
            return Begun("in_flight", record["fp"])
        response = StoredResponse(
            record["status"],
            tuple((name, value) for name, value in record["headers"]),
            bytes.fromhex(record["body"]),
        )
        return Begun("done", record["fp"], response)

    async def finish(
        self, key: str, fingerprint: str, response: StoredResponse, ttl: float
    ) -> None:
        record = {
            "state": "done",
            "fp": fingerprint,
            "status": response.status,
            "headers": response.headers,
            "body": response.body.hex(),
        }
        try:
            await self._redis.set(self._prefix + key, orjson.dumps(record), px=int(ttl * 1000))
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def abandon(self, key: str, fingerprint: str) -> None:
        lock = orjson.dumps({"state": "in_flight", "fp": fingerprint})
        try:
            await self._abandon(keys=[self._prefix + key], args=[lock])
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
