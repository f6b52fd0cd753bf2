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
    """Answers in one large dict of plain values, locks in a small one; answers expired
    in the order they were written.

    ``_answers`` maps a key to its answer packed into one ``bytes`` (``_pack``: the
    fingerprint, status, headers and body). A dict holding only strings and bytes is
    not tracked by the garbage collector at all, whatever its size, while one holding a
    single tuple or object is walked whole by every full collection (one dict of tuples
    cost milliseconds per collection at a hundred thousand records, more as it grew).
    One bytes object per answer also leaves the fewest objects behind per record: each
    is memory that outlives its request among the request's short-lived objects.

    Answers: a TTL is fixed per route and the clock is monotonic, so the answers written
    with one TTL expire in the order they were written: a FIFO queue per distinct TTL
    hands them out in expiry order at O(1) a write. (One heap for every record cost
    O(log n) tuple comparisons per push and per pop.) A queue entry holds the answer
    itself: the record goes only if the key still holds that very object, not one
    written since. The policy makes its TTL's queue (``prepare``) when the routes are
    built, before ``serve`` freezes the start-up heap (``gc.freeze``): a queue made
    later is walked by every full collection.

    Locks: ``_locks`` holds the fingerprint and expiry of each key in flight, a dict
    as small as the requests in flight, so taking and releasing a lock never touches
    the large one. A lock past its expiry is taken over by the next ``begin`` of its
    key, and a sweep every ``_LOCK_SWEEP_S`` removes those nobody asks for again (a
    caller that never finished nor abandoned them). Queuing locks like answers cost
    every request an entry, popped long after the request was answered.

    The ``*_now`` methods answer without a coroutine: the policy calls them directly
    when its store is this one; the async methods are the ``IdempotencyStore`` protocol.
    """

    def __init__(self, clock: Clock) -> None:
        self._monotonic = clock.monotonic
        self._answers: dict[str, bytes] = {}
        # key -> (fingerprint, until), for the keys in flight
        self._locks: dict[str, tuple[str, float]] = {}
        self._sweep_at = clock.monotonic() + _LOCK_SWEEP_S
        # ttl -> (until, key, the answer then written), in the order written
        self._queues: dict[float, deque[tuple[float, str, bytes]]] = {}
        # The earliest time ``_expire`` has anything to do (an answer's expiry, the next
        # sweep): until then ``begin`` skips it, as it does on most requests.
        self._due = self._sweep_at
        self.errors = 0  # never: a dict does not fail

    def prepare(self, ttl: float) -> None:
        """Make the expiry queue of answers kept ``ttl`` now, not on the first one."""
        if ttl not in self._queues:
            self._queues[ttl] = deque()

    def _expire(self, now: float) -> None:
        answers = self._answers
        due = self._sweep_at
        for queue in self._queues.values():
            while queue and queue[0][0] <= now:
                _, key, answer = queue.popleft()
                if answers.get(key) is answer:
                    del answers[key]
            if queue and queue[0][0] < due:
                due = queue[0][0]
        if now >= self._sweep_at:
            self._sweep_at = now + _LOCK_SWEEP_S
            due = min(due, self._sweep_at)
            locks = self._locks
            for key in [key for key, (_, until) in locks.items() if until <= now]:
                del locks[key]
        self._due = due

    def begin_now(self, key: str, fingerprint: str, lock_ttl: float) -> Begun | None:
        """None when the key was free and is now locked for this request (the usual
        case, so no ``Begun`` is made for it); otherwise what holds the key."""
        now = self._monotonic()
        if now >= self._due:
            self._expire(now)
        answer = self._answers.get(key)
        if answer is not None:
            taken, response = _unpack(answer)
            return Begun("done", taken, response)
        lock = self._locks.get(key)
        if lock is not None and lock[1] > now:
            return Begun("in_flight", lock[0])
        self._locks[key] = (fingerprint, now + lock_ttl)
        return None

    def finish_now(self, key: str, fingerprint: str, response: StoredResponse, ttl: float) -> None:
        answer = _pack(fingerprint, response)
        self._answers[key] = answer
        self._locks.pop(key, None)
        queue = self._queues.get(ttl)
        if queue is None:
            # Not prepared (a store used on its own): made here. Queues are kept once
            # made, empty or not: there is one per TTL a config has used, a handful.
            queue = self._queues[ttl] = deque()
        until = self._monotonic() + ttl
        queue.append((until, key, answer))
        if until < self._due:
            self._due = until

    def abandon_now(self, key: str, fingerprint: str) -> None:
        # Only this request's lock: never an answer, nor the lock of another request
        # that took the key over once this one's had expired.
        lock = self._locks.get(key)
        if lock is not None and lock[0] == fingerprint:
            del self._locks[key]

    async def begin(self, key: str, fingerprint: str, lock_ttl: float) -> Begun:
        return self.begin_now(key, fingerprint, lock_ttl) or Begun("new", fingerprint)

    async def finish(
        self, key: str, fingerprint: str, response: StoredResponse, ttl: float
    ) -> None:
        self.finish_now(key, fingerprint, response, ttl)

    async def abandon(self, key: str, fingerprint: str) -> None:
        self.abandon_now(key, fingerprint)

    def __len__(self) -> int:
        return len(self._answers) + len(self._locks)

    async def close(self) -> None:
        self._answers.clear()
        self._locks.clear()
        for queue in self._queues.values():
            queue.clear()


#: How often the memory store looks for locks past their expiry that nobody took over.
_LOCK_SWEEP_S = 1.0


def _pack(fingerprint: str, response: StoredResponse) -> bytes:
    """An answer as one bytes object, for the memory store: marshal, fast, and safe here
    since it only ever reads back what this process wrote."""
    status, headers, body = response
    try:
        return marshal.dumps((fingerprint, status, headers, body), _MARSHAL_VERSION)
    except ValueError:
        # Marshal takes exact str and bytes only: header names of a subclass, such as
        # multidict's ``istr`` (the policy hands over plain ones; anyone else may not).
        plain = tuple((str(name), str(value)) for name, value in headers)
        return marshal.dumps((fingerprint, status, plain, bytes(body)), _MARSHAL_VERSION)


#: Version 2: without the shared-reference table of versions 3 and 4, which builds a
#: hash table on every call and saves nothing on a record of distinct strings.
_MARSHAL_VERSION = 2


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
