"""One behaviour suite for both idempotency stores, then what only the memory store has.

The parametrised tests run against ``MemoryIdempotencyStore`` (on a ``ManualClock``) and
``RedisIdempotencyStore`` (the shared test server, a unique key prefix per test). Cases
that step time run on the memory store only: Redis expires keys on its own clock.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from multidict import istr

from gateway.context import ManualClock
from gateway.policies.idempotency.store import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    StoredResponse,
)

LOCK_TTL = 10.0
TTL = 86400.0
ANSWER = StoredResponse(
    201,
    (("Content-Type", "application/json"), ("Location", "/orders/1")),
    b'{"order": 1}',
)


@dataclass
class Backend:
    name: str
    store: IdempotencyStore


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        memory = MemoryIdempotencyStore(ManualClock())
        yield Backend("memory", memory)
        await memory.close()
        return
    url = request.getfixturevalue("redis_url")
    store = RedisIdempotencyStore(url, timeout=2.0, prefix=f"idem-test-{uuid.uuid4().hex}:")
    yield Backend("redis", store)
    await store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def memory(clock: ManualClock) -> MemoryIdempotencyStore:
    store = MemoryIdempotencyStore(clock)
    store.prepare(TTL)
    return store


# -- the shared behaviour ------------------------------------------------------------


async def test_a_free_key_is_taken_then_in_flight(backend: Backend) -> None:
    store = backend.store
    begun = await store.begin("k", "fp-1", LOCK_TTL)
    assert (begun.state, begun.fingerprint, begun.response) == ("new", "fp-1", None)
    # Another request, same or different: the key is held by the first's fingerprint.
    for fingerprint in ("fp-1", "fp-2"):
        again = await store.begin("k", fingerprint, LOCK_TTL)
        assert (again.state, again.fingerprint, again.response) == ("in_flight", "fp-1", None)


async def test_an_answer_is_given_back_whole(backend: Backend) -> None:
    store = backend.store
    await store.begin("k", "fp-1", LOCK_TTL)
    await store.finish("k", "fp-1", ANSWER, TTL)
    begun = await store.begin("k", "fp-1", LOCK_TTL)
    assert (begun.state, begun.fingerprint) == ("done", "fp-1")
    assert begun.response == ANSWER
    # A different request with the key learns whose it is (the policy answers 422).
    assert (await store.begin("k", "fp-2", LOCK_TTL)).fingerprint == "fp-1"


async def test_header_names_of_any_str_kind_are_stored(backend: Backend) -> None:
    """Upstream header names are multidict's ``istr``: stored and given back as text."""
    store = backend.store
    answer = StoredResponse(409, ((istr("Content-Type"), "application/problem+json"),), b"{}")
    await store.begin("k", "fp", LOCK_TTL)
    await store.finish("k", "fp", answer, TTL)
    response = (await store.begin("k", "fp", LOCK_TTL)).response
    assert response == StoredResponse(409, (("Content-Type", "application/problem+json"),), b"{}")


async def test_abandon_frees_only_its_own_lock(backend: Backend) -> None:
    store = backend.store
    await store.begin("k", "fp-1", LOCK_TTL)
    await store.abandon("k", "fp-2")  # not the request that holds it: nothing happens
    assert (await store.begin("k", "fp-2", LOCK_TTL)).state == "in_flight"
    await store.abandon("k", "fp-1")
    assert (await store.begin("k", "fp-2", LOCK_TTL)).state == "new"


async def test_abandon_never_removes_an_answer(backend: Backend) -> None:
    store = backend.store
    await store.begin("k", "fp", LOCK_TTL)
    await store.finish("k", "fp", ANSWER, TTL)
    await store.abandon("k", "fp")
    assert (await store.begin("k", "fp", LOCK_TTL)).state == "done"


async def test_keys_are_independent(backend: Backend) -> None:
    store = backend.store
    await store.begin("a", "fp", LOCK_TTL)
    await store.finish("a", "fp", ANSWER, TTL)
    assert (await store.begin("b", "fp", LOCK_TTL)).state == "new"
    assert (await store.begin("a", "fp", LOCK_TTL)).state == "done"


# -- the memory store: time, memory, and the collector ---------------------------------


async def test_a_lock_expires_after_its_ttl(
    memory: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    assert memory.begin_now("k", "fp-1", LOCK_TTL) is None  # None: taken, for this request
    clock.advance(LOCK_TTL - 0.001)
    held = memory.begin_now("k", "fp-2", LOCK_TTL)
    assert held is not None
    assert held.state == "in_flight"
    clock.advance(0.002)
    # The holder died (or hangs): another request may take the key.
    assert memory.begin_now("k", "fp-2", LOCK_TTL) is None
    assert (await memory.begin("k", "fp-2", LOCK_TTL)).fingerprint == "fp-2"
    # The first request's late abandon must not free the second's lock.
    memory.abandon_now("k", "fp-1")
    assert (await memory.begin("k", "fp-3", LOCK_TTL)).state == "in_flight"


async def test_forgotten_locks_are_swept(
    memory: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    """A lock nobody finishes, abandons nor asks for again still goes."""
    for index in range(5):
        memory.begin_now(f"k{index}", "fp", LOCK_TTL)
    assert len(memory) == 5
    clock.advance(LOCK_TTL + 1.0)
    memory.begin_now("other", "fp", LOCK_TTL)
    assert len(memory) == 1


async def test_answers_expire_after_the_ttl(
    memory: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    memory.begin_now("old", "fp", LOCK_TTL)
    memory.finish_now("old", "fp", ANSWER, TTL)
    clock.advance(TTL / 2)
    memory.begin_now("young", "fp", LOCK_TTL)
    memory.finish_now("young", "fp", ANSWER, TTL)
    clock.advance(TTL / 2)
    # "old" is exactly TTL old: gone; "young" is kept.
    assert memory.begin_now("old", "fp", LOCK_TTL) is None
    young = memory.begin_now("young", "fp", LOCK_TTL)
    assert young is not None
    assert young.state == "done"
    assert len(memory) == 2  # young's answer, and old's new lock


async def test_a_key_written_again_keeps_its_later_expiry(
    memory: MemoryIdempotencyStore, clock: ManualClock
) -> None:
    """The queue entry of an answer that was replaced must not remove its successor."""
    memory.begin_now("k", "fp", LOCK_TTL)
    memory.finish_now("k", "fp", ANSWER, TTL)
    clock.advance(60.0)
    memory.finish_now("k", "fp", ANSWER, TTL)  # a late duplicate answer, a minute on
    clock.advance(TTL - 30.0)  # past the first answer's expiry, not the second's
    begun = memory.begin_now("k", "fp", LOCK_TTL)
    assert begun is not None
    assert begun.state == "done"
    clock.advance(60.0)
    assert memory.begin_now("k", "fp", LOCK_TTL) is None


async def test_several_ttls_expire_on_their_own(clock: ManualClock) -> None:
    """Routes with other TTLs share the store; a store used on its own (no ``prepare``)
    makes its queues as it goes."""
    store = MemoryIdempotencyStore(clock)
    store.begin_now("long", "fp", LOCK_TTL)
    store.finish_now("long", "fp", ANSWER, TTL)
    store.begin_now("short", "fp", LOCK_TTL)
    store.finish_now("short", "fp", ANSWER, 60.0)
    clock.advance(61.0)
    assert store.begin_now("short", "fp", LOCK_TTL) is None
    long = store.begin_now("long", "fp", LOCK_TTL)
    assert long is not None
    assert long.state == "done"


async def test_close_forgets_everything(memory: MemoryIdempotencyStore) -> None:
    memory.begin_now("a", "fp", LOCK_TTL)
    memory.begin_now("b", "fp", LOCK_TTL)
    memory.finish_now("b", "fp", ANSWER, TTL)
    await memory.close()
    assert len(memory) == 0
    assert memory.begin_now("b", "fp", LOCK_TTL) is None


def test_the_collector_never_walks_the_records(memory: MemoryIdempotencyStore) -> None:
    """Answers are plain bytes: the dict holding them stays untracked by the garbage
    collector however many there are, so full collections do not walk them."""
    for index in range(1000):
        key = f"k{index}"
        memory.begin_now(key, f"{index:064x}", LOCK_TTL)
        if index % 2:
            memory.finish_now(key, f"{index:064x}", ANSWER, TTL)
    gc.collect()
    assert not gc.is_tracked(memory._answers)
