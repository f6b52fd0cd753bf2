"""Where idempotency records live: this process (``memory``) or Redis (every node).

A record is first a *lock* (the request is in flight, with the fingerprint of the
request that took it) that expires on its own after the route's deadline plus a margin,
so a node that dies holding it does not block the key forever; then, once answered,
the stored *response*, kept for the record TTL. ``begin`` is atomic: of two requests
with one key at the same moment, exactly one gets ``new``.
"""

from __future__ import annotations

import heapq
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
    """Records in a dict, expired in order of expiry from a heap.

    A record is a tuple of plain values with the response serialised to one bytes
    object: such tuples are not tracked by the garbage collector, so a store of a
    hundred thousand records does not make every full collection walk them.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # key -> (state, fingerprint, serialised response or b"", until)
        self._records: dict[str, tuple[str, str, bytes, float]] = {}
        self._expiry: list[tuple[float, str]] = []

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, key = heapq.heappop(expiry)
            record = self._records.get(key)
            if record is not None and record[3] <= now:
                del self._records[key]

    def _put(self, key: str, record: tuple[str, str, bytes, float]) -> None:
        self._records[key] = record
        heapq.heappush(self._expiry, (record[3], key))

    async def begin(self, key: str, fingerprint: str, lock_ttl: float) -> Begun:
        now = self._clock.monotonic()
        self._expire(now)
        record = self._records.get(key)
        if record is not None:
            state, stored_fingerprint, blob, _ = record
            if state == "done":
                return Begun("done", stored_fingerprint, _load(blob))
            return Begun("in_flight", stored_fingerprint)
        self._put(key, ("in_flight", fingerprint, b"", now + lock_ttl))
        return Begun("new", fingerprint)

    async def finish(
        self, key: str, fingerprint: str, response: StoredResponse, ttl: float
    ) -> None:
        self._put(key, ("done", fingerprint, _dump(response), self._clock.monotonic() + ttl))

    async def abandon(self, key: str, fingerprint: str) -> None:
        record = self._records.get(key)
        if record is not None and record[0] == "in_flight" and record[1] == fingerprint:
            del self._records[key]

    def __len__(self) -> int:
        return len(self._records)

    async def close(self) -> None:
        self._records.clear()
        self._expiry.clear()


def _dump(response: StoredResponse) -> bytes:
    return orjson.dumps([response.status, response.headers, response.body.hex()])


def _load(blob: bytes) -> StoredResponse:
    status, headers, body = orjson.loads(blob)
    return StoredResponse(
        status, tuple((name, value) for name, value in headers), bytes.fromhex(body)
    )


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
        return Begun("done", record["fp"], _load(record["response"].encode()))

    async def finish(
        self, key: str, fingerprint: str, response: StoredResponse, ttl: float
    ) -> None:
        record = {"state": "done", "fp": fingerprint, "response": _dump(response).decode()}
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
