"""The invalidation bus between two nodes' caches, over a real (private) Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.context import ManualClock
from gateway.policies.cache.bus import InvalidationBus
from gateway.policies.cache.policy import ResponseCache
from gateway.policies.cache.store import ResponseStore
from tests.redis_server import RedisServer
from tests.unit.test_cache_store import entry, get

pytestmark = pytest.mark.timeout(20)


def node() -> ResponseCache:
    return ResponseCache(ResponseStore(max_bytes=100_000, max_entry=10_000), ManualClock())


@pytest.fixture
async def two_nodes(
    private_redis_server: RedisServer,
) -> AsyncIterator[tuple[ResponseCache, ResponseCache, InvalidationBus]]:
    one, two = node(), node()
    buses = [
        InvalidationBus(cache, private_redis_server.url, "test-invalidations")
        for cache in (one, two)
    ]
    for bus in buses:
        await bus.start()
    try:
        yield one, two, buses[1]
    finally:
        for bus in buses:
            await bus.close()


async def until(condition: object, what: str) -> None:
    for _ in range(200):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 2 s: {what}")


async def test_a_prefix_purge_reaches_the_other_node(
    two_nodes: tuple[ResponseCache, ResponseCache, InvalidationBus],
) -> None:
    one, two, two_bus = two_nodes
    users = [entry("/v1/users/1"), entry("/v1/users/2", scope="c:alice")]
    kept = entry("/v1/orders/1")
    for cache in (one, two):
        for each in [*users, kept]:
            assert cache.store.put(each)

    assert one.purge_prefix("/v1/users/") == len(users)

    await until(lambda: two_bus.received == 1, "node two hears of the purge")
    assert [get(two.store, each) for each in users] == [None, None]
    assert get(two.store, kept) is kept
    assert get(one.store, kept) is kept


async def test_a_path_invalidation_still_travels_as_before(
    two_nodes: tuple[ResponseCache, ResponseCache, InvalidationBus],
) -> None:
    one, two, two_bus = two_nodes
    user, other = entry("/v1/users/1"), entry("/v1/users/10")
    for cache in (one, two):
        assert cache.store.put(user)
        assert cache.store.put(other)

    assert one.invalidate(["/v1/users/1"]) == 1

    await until(lambda: two_bus.received == 1, "node two hears of the invalidation")
    assert get(two.store, user) is None
    assert get(two.store, other) is other
