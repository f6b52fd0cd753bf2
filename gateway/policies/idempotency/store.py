"""Where idempotency records live: this process (``memory``) or Redis (every node).

A record is first a *lock* (the request is in flight, with the fingerprint of the
request that took it) that expires on its own after the route's deadline plus a margin,
so a node that dies holding it does not block the key forever; then, once answered,
the stored *response*, kept for the record TTL. ``begin`` is atomic: of two requests
with one key at the same moment, exactly one gets ``new``.
"""

from __future__ import annotations

import marshal
from collections import deque
from typing import Literal, NamedTuple, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ...context import Clock
from ...stores.base import StoreError


class StoredResponse(NamedTuple):
    # A named tuple rather than a frozen dataclass: built on every stored answer, and a
    # tuple is the cheapest immutable record to make (no ``object.__setattr__`` per field).
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class Begun(NamedTuple):
    state: Literal["new", "in_flight", "done"]
    fingerprint: str
    response: StoredResponse | None = None


class IdempotencyStore(Protocol):
    #: Calls that failed (``StoreError``), for the metrics.
    errors: int

    async def begin(self, key: str, fingerprint: str, lock_ttl: float) -> Begun: ...
    async def finish(
        self, key: str, fingerprint: str, response: StoredResponse, ttl: float
    ) -> None: ...
    async def abandon(self, key: str, fingerprint: str) -> None: ...
    async def close(self) -> None: ...


class MemoryIdempotencyStore:
    """Records in dicts of plain values, expired in the order they were written.

    ``_records`` maps a key to the fingerprint (a ``str``) while the request that took
    it is in flight, then to the answer packed into one ``bytes`` (``_pack``: the
    fingerprint, status, headers and body). A dict holding only strings, bytes and
    floats is not tracked by the garbage collector at all, whatever its size, while one
    holding a single tuple or object is walked whole by every full collection (one dict
    of tuples cost milliseconds per collection at a hundred thousand records, more as
    it grew). One bytes object per answer also leaves the fewest objects behind per
    record: each is memory that outlives the request among its short-lived objects.

    Expiry: a TTL is fixed per route (the record TTL; the lock's, its budget plus the
    margin) and the clock is monotonic, so the records written with one TTL expire in
    the order they were written: a FIFO queue per distinct TTL hands them out in expiry
    order at O(1) a write. (One heap for all of them cost O(log n) tuple comparisons per
    push and per pop, each new lock sifting up past the day-long answers above it.)
    An answer's queue entry holds the answer itself: the record goes only if the key
    still holds that very object (not one written since). A lock's entry is checked
    against ``_locks``, the few keys in flight now, so the lock of each request that
    was answered long ago costs a look in that small dict rather than in the large one.
    The policy makes its TTLs' queues (``prepare``) when the routes are built, before
    ``serve`` freezes the start-up heap (``gc.freeze``): a queue made later is walked by
    every full collection.

    The ``*_now`` methods answer without a coroutine: the policy calls them directly
    when its store is this one; the async methods are the ``IdempotencyStore`` protocol.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._records: dict[str, str | bytes] = {}
        # key -> until, for the keys in flight (their record is a fingerprint)
        self._locks: dict[str, float] = {}
        # ttl -> (until, key, the record then written), in the order written
        self._queues: dict[float, deque[tuple[float, str, str | bytes]]] = {}
        self.errors = 0  # never: a dict does not fail

    def prepare(self, ttl: float) -> None:
        """Make the expiry queue of ``ttl`` now, rather than on its first record."""
        if ttl not in self._queues:
            self._queues[ttl] = deque()

    def _queue(self, ttl: float) -> deque[tuple[float, str, str | bytes]]:
        queue = self._queues.get(ttl)
        if queue is None:
            # Not prepared (a store used on its own): made here. Queues are kept once
            # made, empty or not: there is one per TTL a config has used, a handful.
            queue = self._queues[ttl] = deque()
        return queue

    def _expire(self, now: float) -> None:
        records, locks = self._records, self._locks
        for queue in self._queues.values():
            while queue and queue[0][0] <= now:
                until, key, record = queue.popleft()
                if isinstance(record, bytes):
                    if records.get(key) is record:
                        del records[key]
                elif locks.get(key) == until:
                    del locks[key]
                    del records[key]

    def begin_now(self, key: str, fingerprint: str, lock_ttl: float) -> Begun:
        now = self._clock.monotonic()
        self._expire(now)
        record = self._records.get(key)
        if record is None:
            until = now + lock_ttl
            self._records[key] = fingerprint
            self._locks[key] = until
            self._queue(lock_ttl).append((until, key, fingerprint))
            return Begun("new", fingerprint)
        if isinstance(record, str):
            return Begun("in_flight", record)
        taken, response = _unpack(record)
        return Begun("done", taken, response)

    def finish_now(self, key: str, fingerprint: str, response: StoredResponse, ttl: float) -> None:
        packed = _pack(fingerprint, response)
        self._records[key] = packed
        self._locks.pop(key, None)
        self._queue(ttl).append((self._clock.monotonic() + ttl, key, packed))

    def abandon_now(self, key: str, fingerprint: str) -> None:
        # Only a lock (a str) of this very request: never an answer, nor a lock that
        # expired and was taken again by another request.
        if self._records.get(key) == fingerprint:
            del self._records[key]
            self._locks.pop(key, None)

    async def begin(self, key: str, fingerprint: str, lock_ttl: float) -> Begun:
        return self.begin_now(key, fingerprint, lock_ttl)

    async def finish(
        self, key: str, fingerprint: str, response: StoredResponse, ttl: float
    ) -> None:
        self.finish_now(key, fingerprint, response, ttl)

    async def abandon(self, key: str, fingerprint: str) -> None:
        self.abandon_now(key, fingerprint)

    def __len__(self) -> int:
        return len(self._records)

    async def close(self) -> None:
        self._records.clear()
        self._locks.clear()
        for queue in self._queues.values():
            queue.clear()


def _pack(fingerprint: str, response: StoredResponse) -> bytes:
    """An answer as one bytes object, for the memory store: marshal, fast, and safe here
    since it only ever reads back what this process wrote."""
    status, headers, body = response
    try:
        return marshal.dumps((fingerprint, status, headers, body))
    except ValueError:
        # marshal takes no subclass of str, such as multidict's ``istr`` header names
        # (the policy hands over plain ones; anyone else may not).
        plain = tuple((str(name), str(value)) for name, value in headers)
        return marshal.dumps((fingerprint, status, plain, bytes(body)))


def _unpack(packed: bytes) -> tuple[str, StoredResponse]:
    fingerprint, status, headers, body = marshal.loads(packed)  # noqa: S302 - see _pack
    return fingerprint, StoredResponse(status, headers, body)


def _dump(response: StoredResponse) -> bytes:
    """A response as Redis keeps it (JSON, the body in hex)."""
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
        self.errors = 0

    async def begin(self, key: str, fingerprint: str, lock_ttl: float) -> Begun:
        lock = orjson.dumps({"state": "in_flight", "fp": fingerprint})
        try:
            raw = await self._begin(keys=[self._prefix + key], args=[lock, int(lock_ttl * 1000)])
        except (RedisError, OSError) as exc:
            self.errors += 1
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
            self.errors += 1
            raise StoreError(f"redis: {exc}") from exc

    async def abandon(self, key: str, fingerprint: str) -> None:
        lock = orjson.dumps({"state": "in_flight", "fp": fingerprint})
        try:
            await self._abandon(keys=[self._prefix + key], args=[lock])
        except (RedisError, OSError) as exc:
            self.errors += 1
            raise StoreError(f"redis: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
