"""One behaviour suite for every ``LimiterStore``, then what only one backend has.

The parametrised tests run against ``MemoryLimiterStore`` (on a ``ManualClock`` that
is never stepped) and ``RedisLimiterStore`` (the shared test server, a unique key prefix
per test). Redis decides on its own clock (``TIME``), which keeps moving, so the shared
cases use slow rates (one unit a minute) or finish long before a unit comes back: they
hold whatever the clock does. Cases that step time run on the memory store only.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.context import ManualClock
from gateway.policies.ratelimit import wire
from gateway.policies.ratelimit.arithmetic import Decision, Limit, Outcome
from gateway.policies.ratelimit.stores import (
    LimiterStore,
    MemoryLimiterStore,
    RedisLimiterStore,
)
from gateway.stores.base import StoreError
from tests.redis_server import RedisServer

DAY = 86400.0
MINUTE_RATE = 1 / 60  # one unit a minute: nothing refills during a test


def rate(per_second: float, burst: int, name: str = "burst") -> Limit:
    return Limit(name, "rate", per_second, burst, 0.0)


def quota(count: int, period: float, name: str = "daily") -> Limit:
    return Limit(name, "quota", float(count), 0, period)


@dataclass
class Backend:
    name: str
    store: LimiterStore
    prefix: str
    #: The clock the store decides on (the memory store's, or the Redis host's).
    wall: Callable[[], float]
    #: Whether a state is stored under this (unprefixed) key name.
    stored: Callable[[str], Awaitable[bool]]

    def key(self, name: str) -> str:
        return self.prefix + name

    async def decide(
        self, names: Sequence[str], limits: Sequence[Limit], cost: int = 1
    ) -> Decision:
        return await self.store.decide([self.key(name) for name in names], limits, cost)

    async def admitted(self, names: Sequence[str], limits: Sequence[Limit], tries: int) -> int:
        return sum([(await self.decide(names, limits)).admitted for _ in range(tries)])


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    # The hash tag keeps one test's keys on one slot, as the policy's keys are.
    prefix = "{rl:test-" + uuid.uuid4().hex + "}:"
    if request.param == "memory":
        clock = ManualClock()
        memory = MemoryLimiterStore(clock)

        async def in_memory(name: str) -> bool:
            return prefix + name in memory._states

        yield Backend("memory", memory, prefix, clock.wall, in_memory)
        await memory.close()
        return
    url = request.getfixturevalue("redis_url")
    store = RedisLimiterStore.from_url(url, timeout=2.0)
    inspect = Redis.from_url(url)

    async def in_redis(name: str) -> bool:
        return bool(await inspect.exists(prefix + name))

    yield Backend("redis", store, prefix, time.time, in_redis)
    await store.close()
    await inspect.aclose()


# -- the shared behaviour ------------------------------------------------------------


async def test_burst_admits_exactly_burst_at_once(backend: Backend) -> None:
    limit = rate(MINUTE_RATE, 5)
    decisions = [await backend.decide(["a"], [limit]) for _ in range(7)]
    assert [d.admitted for d in decisions] == [True] * 5 + [False] * 2
    assert [d.outcomes[0].remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    refused = decisions[-1]
    # The next unit comes back one interval (60 s) after the first was taken.
    assert 58.0 < refused.retry_after <= 60.0
    assert 298.0 < refused.outcomes[0].reset <= 300.0
    assert decisions[0].outcomes[0].retry_after == 0.0


async def test_a_fast_rate_admits_its_whole_burst(backend: Backend) -> None:
    """Rounding must not cost the burst's last unit: ``rate: 5/s, burst: 10`` lets ten
    through at once. The memory store, deciding ten times at one ``ManualClock``
    instant, loses it to the float resolution of an epoch-scale TAT (~2.4e-7 s, see the
    arithmetic tests). Redis's clock moves between two scripts by far more than that."""
    admitted = {}
    for per_second, burst in [(5.0, 10), (6.0, 2), (40.0, 2)]:
        started = time.monotonic()
        name = f"{per_second}-{burst}"
        admitted[name] = await backend.admitted([name], [rate(per_second, burst)], burst + 1)
        assert time.monotonic() - started < 0.5 / per_second, "too slow: a unit came back"
    assert admitted == {"5.0-10": 10, "6.0-2": 2, "40.0-2": 2}


async def test_cost_takes_several_units(backend: Backend) -> None:
    limit = rate(MINUTE_RATE, 5)
    first = await backend.decide(["a"], [limit], cost=2)
    assert (first.admitted, first.outcomes[0].remaining) == (True, 3)
    assert 119.0 < first.outcomes[0].reset <= 120.0
    second = await backend.decide(["a"], [limit], cost=3)
    assert (second.admitted, second.outcomes[0].remaining) == (True, 0)
    assert not (await backend.decide(["a"], [limit])).admitted


async def test_a_refusal_consumes_nothing(backend: Backend) -> None:
    limit = rate(MINUTE_RATE, 5)
    assert (await backend.decide(["a"], [limit])).outcomes[0].remaining == 4
    for _ in range(3):
        refused = await backend.decide(["a"], [limit], cost=5)
        assert not refused.admitted
        assert refused.outcomes[0].remaining == 4
    # All four units left before the refusals are still there.
    last = await backend.decide(["a"], [limit], cost=4)
    assert (last.admitted, last.outcomes[0].remaining) == (True, 0)


async def test_a_refusal_on_fresh_keys_stores_nothing(backend: Backend) -> None:
    limits = [rate(MINUTE_RATE, 2), quota(5, DAY)]
    refused = await backend.decide(["r", "q"], limits, cost=3)
    assert not refused.admitted
    assert [await backend.stored(name) for name in ("r", "q")] == [False, False]
    assert (await backend.decide(["r", "q"], limits, cost=2)).admitted
    assert [await backend.stored(name) for name in ("r", "q")] == [True, True]


async def test_exhausted_quota_does_not_charge_the_rate(backend: Backend) -> None:
    limits = [rate(MINUTE_RATE, 10), quota(2, DAY)]
    names = ["burst", "daily"]
    assert await backend.admitted(names, limits, 2) == 2
    for _ in range(3):
        refused = await backend.decide(names, limits)
        assert not refused.admitted
        assert [o.admitted for o in refused.outcomes] == [True, False]
    # The rate limit alone: eight of ten units left, not five.
    rest = await backend.decide(["burst"], limits[:1], cost=8)
    assert (rest.admitted, rest.outcomes[0].remaining) == (True, 0)


async def test_a_rate_decided_alone_and_with_a_quota_is_one_budget(backend: Backend) -> None:
    # A plan's key is decided alone on a route without a limit of its own and with the
    # route's limit on another: one budget either way. (The memory store's one-rate
    # path, which the policy takes for the first, is compared in a memory-only test.)
    burst, daily = rate(MINUTE_RATE, 10), quota(100, DAY)
    assert await backend.admitted(["burst"], [burst], 3) == 3
    both = await backend.decide(["burst", "daily"], [burst, daily], cost=2)
    assert [(o.admitted, o.remaining) for o in both.outcomes] == [(True, 5), (True, 98)]
    alone = await backend.decide(["burst"], [burst], cost=5)
    assert (alone.admitted, alone.outcomes[0].remaining) == (True, 0)
    assert not (await backend.decide(["burst", "daily"], [burst, daily])).admitted


async def test_exhausted_rate_does_not_charge_the_quota(backend: Backend) -> None:
    limits = [rate(MINUTE_RATE, 2), quota(100, DAY)]
    names = ["burst", "daily"]
    assert await backend.admitted(names, limits, 2) == 2
    for _ in range(5):
        refused = await backend.decide(names, limits)
        assert [o.admitted for o in refused.outcomes] == [False, True]
    # The quota alone: 98 left, whatever the refusals would have counted.
    rest = await backend.decide(["daily"], limits[1:], cost=98)
    assert (rest.admitted, rest.outcomes[0].remaining) == (True, 0)
    assert not (await backend.decide(["daily"], limits[1:])).admitted


async def test_quota_counts_and_resets_at_utc_midnight(backend: Backend) -> None:
    limit = quota(3, DAY)
    decisions = [await backend.decide(["q"], [limit]) for _ in range(4)]
    assert [d.admitted for d in decisions] == [True, True, True, False]
    assert [d.outcomes[0].remaining for d in decisions] == [2, 1, 0, 0]
    now = backend.wall()
    to_midnight = (math.floor(now / DAY) + 1) * DAY - now
    assert decisions[-1].outcomes[0].reset == pytest.approx(to_midnight, abs=1.0)
    assert decisions[-1].retry_after == pytest.approx(to_midnight, abs=1.0)


async def test_subjects_are_independent(backend: Backend) -> None:
    limit = rate(MINUTE_RATE, 3)
    assert await backend.admitted(["alice"], [limit], 5) == 3
    assert await backend.admitted(["bob"], [limit], 5) == 3
    assert not (await backend.decide(["alice"], [limit])).admitted


async def test_every_limit_reports_its_own_outcome(backend: Backend) -> None:
    limits = [rate(MINUTE_RATE, 4), quota(10, 3600.0, "hourly"), rate(MINUTE_RATE, 2, "route")]
    decision = await backend.decide(["burst", "hourly", "route"], limits, cost=2)
    assert decision.admitted
    assert [o.remaining for o in decision.outcomes] == [2, 8, 0]
    refused = await backend.decide(["burst", "hourly", "route"], limits)
    assert not refused.admitted
    assert [o.admitted for o in refused.outcomes] == [True, True, False]
    # Only the refusing limit's wait counts.
    assert refused.retry_after == refused.outcomes[2].retry_after
    assert 58.0 < refused.retry_after <= 60.0


# -- Redis only --------------------------------------------------------------------------


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[tuple[RedisLimiterStore, Redis, str]]:
    store = RedisLimiterStore.from_url(redis_url, timeout=2.0)
    client = Redis.from_url(redis_url)
    yield store, client, "{rl:test-" + uuid.uuid4().hex + "}:"
    await store.close()
    await client.aclose()


async def test_redis_keys_carry_their_expiry(
    redis_store: tuple[RedisLimiterStore, Redis, str],
) -> None:
    store, client, prefix = redis_store
    keys = [prefix + "burst", prefix + "hourly"]
    limits = [rate(MINUTE_RATE, 5), quota(10, 3600.0, "hourly")]
    assert (await store.decide(keys, limits, 2)).admitted
    now = time.time()
    rate_ttl, quota_ttl = [await client.pttl(key) for key in keys]
    # The TAT is two minutes ahead: the state means nothing after that.
    assert 118_000 < rate_ttl <= 120_002
    to_hour_end = ((math.floor(now / 3600) + 1) * 3600 - now) * 1000
    assert 0 < quota_ttl <= to_hour_end + 1000
    assert quota_ttl > to_hour_end - 2000
    # The stored shapes are the arithmetic's states: a TAT and "window:count".
    stored = await client.get(keys[0])
    assert stored is not None
    tat = float(stored)
    assert tat == pytest.approx(now + 120, abs=2.0)
    assert await client.get(keys[1]) == f"{math.floor(now / 3600)}:2".encode()


async def test_redis_recovers_from_a_flushed_script_cache(
    redis_store: tuple[RedisLimiterStore, Redis, str],
) -> None:
    store, client, prefix = redis_store
    limit = rate(MINUTE_RATE, 5)
    assert (await store.decide([prefix + "a"], [limit], 1)).outcomes[0].remaining == 4
    await client.script_flush()
    again = await store.decide([prefix + "a"], [limit], 1)
    assert (again.admitted, again.outcomes[0].remaining) == (True, 3)
    # Loaded again, once: the next call needs no reload.
    assert await client.script_exists(store._sha or "") == [True]


async def test_redis_down_is_a_store_error(private_redis_server: RedisServer) -> None:
    store = RedisLimiterStore.from_url(private_redis_server.url, timeout=0.5)
    limit = rate(MINUTE_RATE, 5)
    try:
        assert (await store.decide(["{rl:x}:a"], [limit], 1)).admitted
        await private_redis_server.astop()
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(StoreError) as caught:
                await store.decide(["{rl:x}:a"], [limit], 1)
            assert not isinstance(caught.value, RedisError)
            assert time.monotonic() - started < 1.0
        # Back up (empty, without the script): answers again, from a fresh state.
        await private_redis_server.astart()
        decision = None
        for _ in range(20):
            try:
                decision = await store.decide(["{rl:x}:a"], [limit], 1)
                break
            except StoreError:
                await asyncio.sleep(0.05)
        assert decision is not None
        assert (decision.admitted, decision.outcomes[0].remaining) == (True, 4)
    finally:
        await store.close()


async def test_redis_never_reached_is_a_store_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisLimiterStore.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    try:
        with pytest.raises(StoreError):
            await store.decide(["{rl:x}:a"], [rate(1, 1)], 1)
    finally:
        await store.close()


async def test_a_hung_redis_fails_each_decision_within_its_own_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Redis that accepts and never answers, not even the handshake. Each decision
    fails at the end of its own slice, not the first one's remainder nor that plus a
    slice; the connection attempt has a bound of its own, after which a decision
    tries a new connection."""
    monkeypatch.setattr(wire, "CONNECT_TIMEOUT_S", 0.8)
    connections = 0

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisLimiterStore.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.4)

    async def timed_failure(delay: float) -> float:
        await asyncio.sleep(delay)
        started = time.monotonic()
        with pytest.raises(StoreError):
            await store.decide(["{rl:x}:a"], [rate(1, 1)], 1)
        return time.monotonic() - started

    try:
        first, second = await asyncio.gather(timed_failure(0.0), timed_failure(0.25))
        assert 0.35 < first < 0.6
        assert 0.35 < second < 0.52, second
        assert connections == 1
        await asyncio.sleep(0.3)  # the connection attempt has given up (0.8 s)
        third = await timed_failure(0.0)
        assert 0.35 < third < 0.6, third
        assert connections == 2
    finally:
        await store.close()
        server.close()


async def test_closing_the_redis_store_fails_the_decisions_still_waiting() -> None:
    """Closing while decisions wait on a Redis that never answers: they get a
    ``StoreError`` at once, rather than waiting out their slice or for ever."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisLimiterStore.from_url(f"redis://127.0.0.1:{port}/0", timeout=30.0)
    try:
        waiting = [
            asyncio.ensure_future(store.decide([f"{{rl:x}}:{n}"], [rate(1, 1)], 1))
            for n in range(3)
        ]
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in waiting)
        started = time.monotonic()
        await store.close()
        results = await asyncio.wait_for(
            asyncio.gather(*waiting, return_exceptions=True), timeout=2.0
        )
        assert time.monotonic() - started < 1.0
        assert all(isinstance(result, StoreError) for result in results), results
    finally:
        server.close()


# -- memory only: stepping time -----------------------------------------------------------


async def test_memory_refills_one_unit_per_interval() -> None:
    clock = ManualClock()
    store = MemoryLimiterStore(clock)
    limit = rate(2.0, 2)
    assert [(await store.decide(["a"], [limit], 1)).admitted for _ in range(3)] == [
        True,
        True,
        False,
    ]
    clock.advance(0.4)
    assert not (await store.decide(["a"], [limit], 1)).admitted
    clock.advance(0.1)
    assert (await store.decide(["a"], [limit], 1)).admitted
    assert not (await store.decide(["a"], [limit], 1)).admitted
    clock.advance(60)
    assert [(await store.decide(["a"], [limit], 1)).admitted for _ in range(3)] == [
        True,
        True,
        False,
    ]


async def test_memory_quota_resets_at_the_window_boundary() -> None:
    midnight = 1_700_006_400.0  # 2023-11-15 00:00:00 UTC
    assert midnight % DAY == 0
    clock = ManualClock(wall=midnight - 5)
    store = MemoryLimiterStore(clock)
    limit = quota(2, DAY)
    assert [(await store.decide(["q"], [limit], 1)).admitted for _ in range(3)] == [
        True,
        True,
        False,
    ]
    clock.advance(4.999)
    assert not (await store.decide(["q"], [limit], 1)).admitted
    clock.advance(0.001)
    fresh = await store.decide(["q"], [limit], 1)
    assert (fresh.admitted, fresh.outcomes[0].remaining) == (True, 1)
    assert fresh.outcomes[0].reset == pytest.approx(DAY)


async def test_memory_sweeps_expired_states() -> None:
    clock = ManualClock()
    store = MemoryLimiterStore(clock, sweep_every=3)
    limit = rate(1.0, 5)
    await store.decide(["old"], [limit], 1)  # meaningful for 1 s
    clock.advance(2)
    await store.decide(["b"], [limit], 1)
    assert len(store) == 2  # no sweep yet: the stale state is still held
    await store.decide(["c"], [limit], 1)  # the third write sweeps
    assert len(store) == 2
    assert "old" not in store._states
    await store.close()
    assert len(store) == 0


async def test_memory_ignores_an_expired_state_before_any_sweep() -> None:
    clock = ManualClock()
    store = MemoryLimiterStore(clock)
    limit = quota(1, 60.0, "minutely")
    assert (await store.decide(["q"], [limit], 1)).admitted
    clock.advance(60)
    assert (await store.decide(["q"], [limit], 1)).admitted


async def test_memory_one_rate_path_decides_as_the_general_path() -> None:
    # The policy asks ``decide_rate_now`` when a route's limits are one rate limit: fed
    # the same requests at the same times, it must say what ``decide`` says, and each
    # must read what the other wrote.
    limit = rate(2.0, 3)
    steps = [0.0, 0.0, 0.0, 0.0, 0.2, 0.3, 0.0, 1.7, 0.0, 0.0, 5.0]
    costs = [1, 1, 1, 1, 1, 1, 2, 2, 1, 4, 3]
    general_clock, fast_clock = ManualClock(), ManualClock()
    general, fast = MemoryLimiterStore(general_clock), MemoryLimiterStore(fast_clock)
    seen = set()
    daily = quota(100, DAY)
    for index, (step, cost) in enumerate(zip(steps, costs, strict=True)):
        general_clock.advance(step)
        fast_clock.advance(step)
        if index % 3 == 2:
            # The same key decided together with a quota (a route adding its own limit
            # to a plan's): the general path on both stores, reading what each wrote.
            both = await general.decide(["a", "d"], [limit, daily], cost)
            assert await fast.decide(["a", "d"], [limit, daily], cost) == both, index
            continue
        expected = (await general.decide(["a"], [limit], cost)).outcomes[0]
        if index % 3:
            got = (await fast.decide(["a"], [limit], cost)).outcomes[0]
        else:
            got = Outcome(*fast.decide_rate_now("a", limit, cost))
        assert got == expected, f"request {index}"
        seen.add(got.admitted)
    assert seen == {True, False}
    assert not fast.decide_rate_now("a", limit, 4)[0]  # above the burst: never


async def test_memory_one_rate_path_ignores_an_expired_state_and_sweeps() -> None:
    clock = ManualClock()
    store = MemoryLimiterStore(clock, sweep_every=2)
    limit = rate(1.0, 1)
    assert store.decide_rate_now("a", limit, 1)[0]
    assert not store.decide_rate_now("a", limit, 1)[0]
    clock.advance(5)
    assert store.decide_rate_now("b", limit, 1)[0]  # the second write sweeps
    assert "a" not in store._states
    assert store.decide_rate_now("a", limit, 1)[0]
