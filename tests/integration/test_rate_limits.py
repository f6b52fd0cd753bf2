"""Rate limits over real HTTP: refusals, headers, plans and contracts, the deny cache,
shadow mode, the Redis store going away and coming back, and config that is refused.

Memory-store tests run on a ``ManualClock`` (time moves when the test says so). Redis
tests use a private server of their own, so stopping it disturbs nobody.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from redis.asyncio import Redis

from gateway.config import ConfigError, ConfigIssue, load_config
from gateway.config.model import RateLimitsSpec
from gateway.context import Clock, ManualClock
from gateway.policies.auth import manage
from gateway.policies.ratelimit.arithmetic import Limit
from gateway.policies.ratelimit.policy import Limiter
from gateway.stores.base import StoreError
from tests.conftest import RunningGateway, write_gateway_config
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

PROBLEM = "application/problem+json"
#: From a fresh ManualClock's wall time (80 000 s into a UTC day) to the next midnight.
TO_MIDNIGHT = int(86400 - ManualClock().wall() % 86400)


class Upstream:
    def __init__(self) -> None:
        self.hits = 0

    def app(self) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        return app


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, str]:
    counter = Upstream()
    server = await aiohttp_server(counter.app())
    return counter, str(server.make_url("")).rstrip("/")


@pytest.fixture
def upstream_url(upstream: tuple[Upstream, str]) -> str:
    return upstream[1]


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    async with http.get(url, headers=headers or {}) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


async def statuses(
    http: aiohttp.ClientSession, url: str, count: int, headers: dict[str, str] | None = None
) -> list[int]:
    return [(await get(http, url, headers))[0] for _ in range(count)]


def auth_top(tmp_path: Path, limits: str) -> str:
    return (
        f"auth:\n  sqlite_path: {tmp_path / 'credentials.db'}\n"
        f"  pepper_file: {tmp_path / 'pepper.json'}\n" + textwrap.dedent(limits)
    )


async def api_key(gw: RunningGateway, consumer: str, plan: str | None = None) -> dict[str, str]:
    auth = gw.gateway.auth
    assert auth is not None
    created = await manage.create_api_key(
        auth.store, auth.peppers, gw.gateway.clock, consumer_id=consumer, plan=plan
    )
    return {"X-API-Key": created.key}


def limiter_of(gw: RunningGateway) -> Limiter:
    limiter = gw.gateway.limiter
    assert limiter is not None
    return limiter


def count_calls_of(owner: Any, *names: str) -> list[int]:
    """Wrap the named methods with one counter that calls through; the box."""
    calls = [0]
    for name in names:
        original = getattr(owner, name)

        def counting(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls[0] += 1
            return _original(*args, **kwargs)

        setattr(owner, name, counting)
    return calls


def count_calls(owner: Any) -> list[int]:
    """Wrap the store's decision method with a counter that calls through; the box.

    The memory store is asked through ``decide_now`` or, for one rate limit,
    ``decide_rate_now`` (it never waits), Redis through ``send`` (a command's reply).
    """
    if hasattr(owner, "decide_now"):
        return count_calls_of(owner, "decide_now", "decide_rate_now")
    return count_calls_of(owner, "send")


# -- refusals and headers (memory store) ------------------------------------------------


async def test_burst_then_429_problem_with_retry_after(
    start_gateway: Any, upstream: tuple[Upstream, str], http: aiohttp.ClientSession
) -> None:
    counter, url = upstream
    clock = ManualClock()
    gw = await start_gateway(
        f"""
        routes:
          - path: /ip
            proxy: {{url: '{url}'}}
            rate_limit: {{by: ip}}
        """,
        top="rate_limits: {plans: {free: {rate: 1/s, burst: 3}}}",
        clock=clock,
    )
    replies = [await get(http, f"{gw.url}/ip") for _ in range(4)]
    assert [status for status, _, _ in replies] == [200, 200, 200, 429]
    assert counter.hits == 3  # the refused request never reached the upstream
    for _, headers, _ in replies:
        assert headers["RateLimit-Policy"] == '"burst";q=3;w=3'
    assert [headers["RateLimit"] for _, headers, _ in replies] == [
        '"burst";r=2;t=1',
        '"burst";r=1;t=2',
        '"burst";r=0;t=3',
        '"burst";r=0;t=3',
    ]
    _, headers, body = replies[3]
    assert headers["Content-Type"] == PROBLEM
    assert headers["Retry-After"] == "1"
    problem = json.loads(body)
    assert problem["status"] == 429
    assert problem["type"] == "urn:gateway:problem:rate-limited"
    assert problem["request_id"] == headers["X-Request-Id"]
    # One interval later exactly one more passes.
    clock.advance(1.0)
    assert await statuses(http, f"{gw.url}/ip", 2) == [200, 429]
    assert limiter_of(gw).counts == {"admitted": 4, "refused": 2}


async def test_quota_and_burst_together(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    gw = await start_gateway(
        f"""
        routes:
          - path: /q
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: ip}}
        """,
        top="rate_limits: {plans: {free: {rate: 2/s, burst: 4, quota: 5/day}}}",
        clock=clock,
    )
    url = f"{gw.url}/q"
    replies = [await get(http, url) for _ in range(5)]
    assert [status for status, _, _ in replies] == [200, 200, 200, 200, 429]
    policy = '"burst";q=4;w=2, "daily";q=5;w=86400'
    assert {headers["RateLimit-Policy"] for _, headers, _ in replies} == {policy}
    assert replies[0][1]["RateLimit"] == f'"burst";r=3;t=1, "daily";r=4;t={TO_MIDNIGHT}'
    assert replies[3][1]["RateLimit"] == f'"burst";r=0;t=2, "daily";r=1;t={TO_MIDNIGHT}'
    # The burst refused the fifth: it cost the quota nothing, so one is left.
    clock.advance(0.5)
    status, headers, _ = await get(http, url)
    assert status == 200
    assert headers["RateLimit"] == f'"burst";r=0;t=2, "daily";r=0;t={TO_MIDNIGHT}'
    # Now the quota refuses, for the rest of the UTC day, however full the burst is.
    clock.advance(10.0)
    status, headers, _ = await get(http, url)
    assert status == 429
    assert headers["Retry-After"] == str(TO_MIDNIGHT - 10)
    assert headers["RateLimit"].endswith(f'"daily";r=0;t={TO_MIDNIGHT - 10}')
    # ...and the burst was not charged by that refusal: after midnight, four at once.
    clock.advance(TO_MIDNIGHT)
    assert await statuses(http, url, 5) == [200, 200, 200, 200, 429]


async def test_refusals_within_retry_are_answered_from_memory(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    gw = await start_gateway(
        f"""
        routes:
          - path: /ip
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: ip}}
        """,
        top="rate_limits: {plans: {free: {rate: 2/s, burst: 2}}}",
        clock=clock,
    )
    limiter = limiter_of(gw)
    calls = count_calls(limiter.local)
    assert await statuses(http, f"{gw.url}/ip", 3) == [200, 200, 429]
    assert calls[0] == 3
    refused = await get(http, f"{gw.url}/ip")
    for _ in range(4):
        status, headers, _ = await get(http, f"{gw.url}/ip")
        assert status == 429
        assert headers["Retry-After"] == "1"
        assert headers["RateLimit"] == refused[1]["RateLimit"] == '"burst";r=0;t=1'
        assert headers["RateLimit-Policy"] == '"burst";q=2;w=1'
    assert calls[0] == 3, "refusals within the retry time must not ask the store"
    assert limiter.counts["refused_cached"] == 5
    # Once the retry time has passed, the store is asked again, and admits.
    clock.advance(0.5)
    assert await statuses(http, f"{gw.url}/ip", 1) == [200]
    assert calls[0] == 4


async def test_one_rate_limit_takes_the_memory_stores_short_path(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        f"""
        routes:
          - path: /rate
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: ip}}
          - path: /both
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: ip, plan: false, limit: {{rate: 5/s, quota: 100/day}}}}
        """,
        top="rate_limits: {plans: {free: {rate: 5/s, burst: 5}}}",
        clock=ManualClock(),
    )
    local = limiter_of(gw).local
    short, general = count_calls_of(local, "decide_rate_now"), count_calls_of(local, "decide_now")
    assert await statuses(http, f"{gw.url}/rate", 2) == [200, 200]
    assert (short[0], general[0]) == (2, 0)
    assert await statuses(http, f"{gw.url}/both", 2) == [200, 200]
    assert (short[0], general[0]) == (2, 2)


# -- plans, contracts, subjects ------------------------------------------------------------


CONSUMER_ROUTES = """
routes:
  - path: /c
    auth: [api_key]
    proxy: {{url: '{url}'}}
    rate_limit: {{by: consumer}}
  - path: /k
    auth: [api_key]
    proxy: {{url: '{url}'}}
    rate_limit: {{by: api_key}}
"""


async def test_consumers_do_not_share_a_plan_budget(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = await start_gateway(
        CONSUMER_ROUTES.format(url=upstream_url),
        top=auth_top(tmp_path, "rate_limits: {plans: {free: {rate: 1/minute, burst: 2}}}"),
        clock=ManualClock(),
    )
    alice, bob = await api_key(gw, "alice"), await api_key(gw, "bob")
    assert await statuses(http, f"{gw.url}/c", 4, alice) == [200, 200, 429, 429]
    assert await statuses(http, f"{gw.url}/c", 3, bob) == [200, 200, 429]


async def test_by_consumer_shares_by_api_key_does_not(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gw = await start_gateway(
        CONSUMER_ROUTES.format(url=upstream_url),
        top=auth_top(tmp_path, "rate_limits: {plans: {free: {rate: 1/minute, burst: 2}}}"),
        clock=ManualClock(),
    )
    first, second = await api_key(gw, "acme"), await api_key(gw, "acme")
    # by: api_key — each key of the consumer has its own budget.
    assert await statuses(http, f"{gw.url}/k", 3, first) == [200, 200, 429]
    assert await statuses(http, f"{gw.url}/k", 3, second) == [200, 200, 429]
    # by: consumer — one budget for all of acme's keys.
    assert await statuses(http, f"{gw.url}/c", 1, first) == [200]
    assert await statuses(http, f"{gw.url}/c", 2, second) == [200, 429]


async def test_a_contract_overrides_the_plan(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    limits = """
    rate_limits:
      plans:
        free: {rate: 1/minute, burst: 2}
      consumers:
        acme: {plan: free, burst: 5}
    """
    gw = await start_gateway(
        CONSUMER_ROUTES.format(url=upstream_url),
        top=auth_top(tmp_path, limits),
        clock=ManualClock(),
    )
    acme, other = await api_key(gw, "acme"), await api_key(gw, "other")
    replies = [await get(http, f"{gw.url}/c", acme) for _ in range(6)]
    assert [status for status, _, _ in replies] == [200] * 5 + [429]
    assert replies[0][1]["RateLimit-Policy"] == '"burst";q=5;w=300'
    assert replies[0][1]["RateLimit"] == '"burst";r=4;t=60'
    status, headers, _ = await get(http, f"{gw.url}/c", other)
    assert status == 200
    assert headers["RateLimit-Policy"] == '"burst";q=2;w=120'


async def test_a_contract_without_a_plan_builds_on_the_consumers_own_plan(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """``consumers: {acme: {burst: 50}}`` raises acme's burst; its rate and quota stay
    those of acme's plan (``pro``), not of the default plan (``free``)."""
    limits = """
    rate_limits:
      plans:
        free: {rate: 1/minute, burst: 2}
        pro: {rate: 10/s, burst: 20, quota: 1000/day}
      consumers:
        acme: {burst: 50}
    """
    gw = await start_gateway(
        CONSUMER_ROUTES.format(url=upstream_url),
        top=auth_top(tmp_path, limits),
        clock=ManualClock(),
    )
    acme = await api_key(gw, "acme", plan="pro")
    status, headers, _ = await get(http, f"{gw.url}/c", acme)
    assert status == 200
    assert headers["RateLimit-Policy"] == '"burst";q=50;w=5, "daily";q=1000;w=86400'


async def test_cost_per_route_draws_on_one_plan_budget(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        f"""
        routes:
          - path: /cheap
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: ip}}
          - path: /dear
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: ip, cost: 3}}
        """,
        top="rate_limits: {plans: {free: {rate: 1/minute, burst: 6}}}",
        clock=ManualClock(),
    )
    status, headers, _ = await get(http, f"{gw.url}/dear")
    assert (status, headers["RateLimit"]) == (200, '"burst";r=3;t=180')
    replies = [await get(http, f"{gw.url}/cheap") for _ in range(2)]
    assert [h["RateLimit"] for _, h, _ in replies] == ['"burst";r=2;t=240', '"burst";r=1;t=300']
    status, headers, _ = await get(http, f"{gw.url}/dear")
    assert status == 429
    assert headers["Retry-After"] == "120"  # two more units must come back


async def test_a_refused_expensive_request_does_not_block_cheap_ones(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    """A cost-5 request refused with 4 units left must not refuse the cost-1 requests
    those 4 units pay for: the deny cache is per subject, not per (limits, cost)."""
    gw = await start_gateway(
        f"""
        routes:
          - path: /cheap
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: ip}}
          - path: /fanout
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: ip, cost: 5}}
        """,
        top="rate_limits: {plans: {free: {rate: 1/minute, burst: 5}}}",
        clock=ManualClock(),
    )
    assert await statuses(http, f"{gw.url}/cheap", 1) == [200]
    assert await statuses(http, f"{gw.url}/fanout", 1) == [429]
    assert await statuses(http, f"{gw.url}/cheap", 5) == [200, 200, 200, 200, 429]


ROUTE_LIMIT_ROUTES = """
routes:
  - path: /a
    proxy: {{url: '{url}'}}
    rate_limit: {{by: ip, limit: {{rate: 1/minute, burst: 2}}}}
  - path: /b
    proxy: {{url: '{url}'}}
    rate_limit: {{by: ip, limit: {{rate: 1/minute, burst: 2}}}}
"""


async def test_a_route_limit_on_top_of_the_plan_has_its_own_keys(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        ROUTE_LIMIT_ROUTES.format(url=upstream_url),
        top="rate_limits: {plans: {free: {rate: 1/minute, burst: 10}}}",
        clock=ManualClock(),
    )
    a = [await get(http, f"{gw.url}/a") for _ in range(2)]
    b = await get(http, f"{gw.url}/b")
    assert [r[0] for r in [*a, b]] == [200, 200, 200]
    assert b[1]["RateLimit-Policy"] == '"burst";q=10;w=600, "route-burst";q=2;w=120'
    # The plan's budget is one for both routes; each route's own limit is its own.
    assert a[1][1]["RateLimit"] == '"burst";r=8;t=120, "route-burst";r=0;t=120'
    assert b[1]["RateLimit"] == '"burst";r=7;t=180, "route-burst";r=1;t=60'
    status, headers, _ = await get(http, f"{gw.url}/a")
    assert status == 429
    assert headers["RateLimit"].endswith(', "route-burst";r=0;t=120')


async def test_a_route_limit_refusal_does_not_refuse_other_routes(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    """/a's own limit is spent; /b's is not, and the plan has units to spare. The deny
    cache must not turn /a's refusal into one for /b."""
    gw = await start_gateway(
        ROUTE_LIMIT_ROUTES.format(url=upstream_url),
        top="rate_limits: {plans: {free: {rate: 1/minute, burst: 10}}}",
        clock=ManualClock(),
    )
    assert await statuses(http, f"{gw.url}/a", 3) == [200, 200, 429]
    status, headers, _ = await get(http, f"{gw.url}/b")
    assert status == 200, headers.get("RateLimit")


async def test_by_header_and_by_ip_with_an_anonymous_plan(
    start_gateway: Any, upstream_url: str, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(
        f"""
        routes:
          - path: /tenant
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: 'header:X-Tenant', anonymous_plan: anon}}
          - path: /ip
            proxy: {{url: '{upstream_url}'}}
            rate_limit: {{by: ip, anonymous_plan: anon}}
        """,
        top="""
        rate_limits:
          plans:
            free: {rate: 1/minute, burst: 5}
            anon: {rate: 1/minute, burst: 2}
        """,
        clock=ManualClock(),
    )
    url = f"{gw.url}/tenant"
    assert await statuses(http, url, 3, {"X-Tenant": "a"}) == [200, 200, 429]
    assert await statuses(http, url, 3, {"X-Tenant": "b"}) == [200, 200, 429]
    status, headers, _ = await get(http, url, {"X-Tenant": "c"})
    assert status == 200
    assert headers["RateLimit-Policy"] == '"burst";q=2;w=120'
    # Without the header the caller is counted by its address, on the same plan.
    assert await statuses(http, url, 3) == [200, 200, 429]
    assert await statuses(http, f"{gw.url}/ip", 1) == [429]
    assert await statuses(http, url, 1, {"X-Tenant": "d"}) == [200]


async def test_shadow_mode_reports_but_never_refuses(
    start_gateway: Any, upstream: tuple[Upstream, str], http: aiohttp.ClientSession
) -> None:
    counter, url = upstream
    gw = await start_gateway(
        f"""
        routes:
          - path: /s
            proxy: {{url: '{url}'}}
            rate_limit: {{by: ip, shadow: true}}
        """,
        top="rate_limits: {plans: {free: {rate: 1/minute, burst: 2}}}",
        clock=ManualClock(),
    )
    replies = [await get(http, f"{gw.url}/s") for _ in range(5)]
    assert [status for status, _, _ in replies] == [200] * 5
    assert counter.hits == 5
    assert [h.get("Gateway-RateLimit") for _, h, _ in replies] == [None, None] + [
        "shadow;would-refuse"
    ] * 3
    for _, headers, _ in replies:
        assert headers["RateLimit-Policy"] == '"burst";q=2;w=120'
        assert "Retry-After" not in headers
    assert replies[-1][1]["RateLimit"] == '"burst";r=0;t=120'
    assert limiter_of(gw).counts == {"admitted": 2, "shadow_refused": 3}


# -- the Redis store over HTTP --------------------------------------------------------------


REDIS_ROUTES = """
routes:
  - path: /open
    proxy: {{url: '{url}'}}
    rate_limit: {{by: 'header:X-Tenant'}}
  - path: /closed
    proxy: {{url: '{url}'}}
    rate_limit: {{by: 'header:X-Tenant', on_store_down: fail_closed}}
  - path: /keyed
    auth: [api_key]
    proxy: {{url: '{url}'}}
    rate_limit: {{on_store_down: fail_closed}}
  - path: /fallback
    proxy: {{url: '{url}'}}
    rate_limit: {{by: 'header:X-Tenant', on_store_down: local_fallback, local_share: 0.5}}
  - path: /shadow-fallback
    proxy: {{url: '{url}'}}
    rate_limit:
      by: 'header:X-Tenant'
      on_store_down: local_fallback
      local_share: 0.5
      shadow: true
"""


@pytest.fixture
def redis_gateway(
    start_gateway: Any, upstream_url: str, tmp_path: Path
) -> Callable[[str, Clock | None], Awaitable[RunningGateway]]:
    async def start(redis_url: str, clock: Clock | None = None) -> RunningGateway:
        limits = f"""
        rate_limits:
          store: redis
          redis_url: '{redis_url}'
          redis_timeout: 50ms
          breaker: {{failures: 2, open_for: 500ms}}
          plans:
            free: {{rate: 1/minute, burst: 10}}
        """
        gw: RunningGateway = await start_gateway(
            REDIS_ROUTES.format(url=upstream_url), top=auth_top(tmp_path, limits), clock=clock
        )
        return gw

    return start


async def test_redis_store_limits_over_http(
    redis_gateway: Any, private_redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    gw = await redis_gateway(private_redis_server.url)
    tenant = {"X-Tenant": "t1"}
    replies = [await get(http, f"{gw.url}/open", tenant) for _ in range(11)]
    assert [status for status, _, _ in replies] == [200] * 10 + [429]
    assert replies[0][1]["RateLimit"] == '"burst";r=9;t=60'
    assert all("Gateway-RateLimit" not in h for _, h, _ in replies)
    client = Redis.from_url(private_redis_server.url)
    try:
        assert await client.pttl("{rl:h:X-Tenant:t1}:burst") > 500_000
    finally:
        await client.aclose()


async def test_the_redis_store_is_connected_with_its_script_loaded_at_start(
    redis_gateway: Any, private_redis_server: RedisServer
) -> None:
    # A fresh server knows no script: after the start, before any request, it does.
    await redis_gateway(private_redis_server.url)
    script = resources.files("gateway.policies.ratelimit").joinpath("limiter.lua")
    digest = hashlib.sha1(script.read_bytes(), usedforsecurity=False).hexdigest()
    client = Redis.from_url(private_redis_server.url)
    try:
        assert await client.script_exists(digest) == [True]
        assert len(await client.client_list()) == 2  # the gateway's and this one
    finally:
        await client.aclose()


async def test_a_redis_store_down_at_start_is_logged_and_routes_follow_their_mode(
    redis_gateway: Any,
    private_redis_server: RedisServer,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await private_redis_server.astop()
    gw = await redis_gateway(private_redis_server.url)
    assert "rate-limit store not reachable at start" in caplog.text
    # Counted, and the breaker open already: no request waits for a timeout.
    limiter = limiter_of(gw)
    assert (limiter.store_errors, limiter.breaker.state) == (1, "open")
    status, headers, _ = await get(http, f"{gw.url}/open", {"X-Tenant": "t1"})
    assert (status, headers["Gateway-RateLimit"]) == (200, "store-unavailable")
    assert limiter.store_errors == 1  # the request did not try Redis


async def raw_status(url: str, request: bytes) -> int:
    """The status of one request written byte for byte (a client library would refuse
    to send a header that is not valid text)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_a_header_subject_that_is_not_utf8_is_limited_like_any_other(
    redis_gateway: Any, private_redis_server: RedisServer
) -> None:
    gw = await redis_gateway(private_redis_server.url)
    request = (
        b"GET /open HTTP/1.1\r\nHost: gw\r\nX-Tenant: caf\xe9\xff\r\nConnection: close\r\n\r\n"
    )
    statuses_seen = [await raw_status(gw.url, request) for _ in range(11)]
    assert statuses_seen == [200] * 10 + [429]
    client = Redis.from_url(private_redis_server.url)
    try:
        assert await client.pttl(b"{rl:h:X-Tenant:caf\xe9\xff}:burst") > 500_000
    finally:
        await client.aclose()


async def test_redis_down_fail_open_admits_and_marks(
    redis_gateway: Any, private_redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    gw = await redis_gateway(private_redis_server.url, ManualClock())
    tenant = {"X-Tenant": "t1"}
    assert (await get(http, f"{gw.url}/open", tenant))[0] == 200
    await private_redis_server.astop()
    replies = [await get(http, f"{gw.url}/open", tenant) for _ in range(15)]
    assert [status for status, _, _ in replies] == [200] * 15  # more than the burst
    for _, headers, _ in replies:
        assert headers["Gateway-RateLimit"] == "store-unavailable"
        assert "RateLimit" not in headers
    assert limiter_of(gw).counts == {"admitted": 1, "store_down_admitted": 15}


async def test_redis_down_fail_closed_is_503_never_401_403_500(
    redis_gateway: Any,
    private_redis_server: RedisServer,
    http: aiohttp.ClientSession,
) -> None:
    gw = await redis_gateway(private_redis_server.url, ManualClock())
    key = await api_key(gw, "acme")
    await private_redis_server.astop()
    for path, headers in [("/closed", {"X-Tenant": "t1"}), ("/keyed", key)] * 3:
        status, reply, body = await get(http, f"{gw.url}{path}", headers)
        assert status == 503, (path, status, body)
        assert reply["Content-Type"] == PROBLEM
        assert reply["Retry-After"] == "1"
        problem = json.loads(body)
        assert (problem["status"], problem["type"]) == (503, "urn:gateway:problem:unavailable")
    assert limiter_of(gw).counts == {"store_down_refused": 6}


async def test_redis_down_local_fallback_applies_its_share(
    redis_gateway: Any, private_redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    gw = await redis_gateway(private_redis_server.url, ManualClock())
    await private_redis_server.astop()
    replies = [await get(http, f"{gw.url}/fallback", {"X-Tenant": "t1"}) for _ in range(12)]
    assert [status for status, _, _ in replies] == [200] * 5 + [429] * 7
    assert replies[0][1]["Gateway-RateLimit"] == "local-fallback"
    assert replies[0][1]["RateLimit"] == '"burst";r=4;t=120'
    assert replies[5][1]["Retry-After"] == "120"
    # Another tenant has its own local budget.
    assert await statuses(http, f"{gw.url}/fallback", 6, {"X-Tenant": "t2"}) == [200] * 5 + [429]


async def test_a_shadow_refusal_on_the_local_fallback_shows_both_in_one_field(
    redis_gateway: Any, private_redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    gw = await redis_gateway(private_redis_server.url, ManualClock())
    await private_redis_server.astop()
    url = f"{gw.url}/shadow-fallback"
    replies = [await get(http, url, {"X-Tenant": "t1"}) for _ in range(6)]
    assert [status for status, _, _ in replies] == [200] * 6  # shadow: never refused
    assert [h.getall("Gateway-RateLimit") for _, h, _ in replies] == [["local-fallback"]] * 5 + [
        ["local-fallback, shadow;would-refuse"]
    ]


async def black_hole() -> tuple[asyncio.Server, list[int]]:
    """A TCP server that accepts and never answers: a Redis that hangs."""
    accepted = [0]

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            while await reader.read(4096):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, accepted


async def timed(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    started = time.monotonic()
    status, reply, _ = await get(http, url, headers)
    assert (status, reply["Gateway-RateLimit"]) == (200, "store-unavailable")
    return time.monotonic() - started


@pytest.mark.parametrize("outage", ["stopped", "hanging"])
async def test_no_request_waits_beyond_the_redis_slice(
    redis_gateway: Any,
    private_redis_server: RedisServer,
    http: aiohttp.ClientSession,
    outage: str,
) -> None:
    if outage == "stopped":
        private_redis_server.stop()
        url, server = private_redis_server.url, None
    else:
        server, _ = await black_hole()
        url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    try:
        gw = await redis_gateway(url, ManualClock())
        limiter = limiter_of(gw)
        # The start found Redis down and opened the breaker; here the outage is to
        # begin with the breaker closed, as when Redis fails under a running gateway.
        assert limiter.breaker.state == "open"
        limiter.breaker.succeeded()
        calls = count_calls(limiter.store)
        tenant = {"X-Tenant": "t1"}
        waits = [await timed(http, f"{gw.url}/open", tenant) for _ in range(30)]
        # Each waits at most the 50 ms slice (plus the gateway's own time)...
        assert max(waits) < 0.15, waits
        # ...and only until the breaker opens: the rest never touch Redis.
        assert limiter.breaker.state == "open"
        assert calls[0] == 2
        concurrent = await asyncio.gather(
            *(timed(http, f"{gw.url}/open", tenant) for _ in range(20))
        )
        # Twenty at once are answered one after the other by one process: the bound is
        # for that, not for any wait on Redis, which they never ask (the count below).
        assert max(concurrent) < 0.5
        assert calls[0] == 2
    finally:
        if server is not None:
            server.close()


async def test_limiting_resumes_after_redis_comes_back(
    redis_gateway: Any, private_redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    gw = await redis_gateway(private_redis_server.url)  # the real clock: open_for passes
    limiter = limiter_of(gw)
    tenant = {"X-Tenant": "t1"}
    await private_redis_server.astop()
    for _ in range(3):
        status, headers, _ = await get(http, f"{gw.url}/open", tenant)
        assert (status, headers["Gateway-RateLimit"]) == (200, "store-unavailable")
    assert str(limiter.breaker.state) == "open"
    await private_redis_server.astart()  # empty, without the script
    await asyncio.sleep(0.6)
    # Poll until a decision comes from Redis again (the probe may find a dead connection).
    decided: list[CIMultiDict[str]] = []
    for _ in range(40):
        status, headers, _ = await get(http, f"{gw.url}/open", tenant)
        if "Gateway-RateLimit" not in headers:
            decided.append(headers)
            break
        await asyncio.sleep(0.1)
    assert decided, "the gateway never went back to Redis"
    assert decided[0]["RateLimit"] == '"burst";r=9;t=60'
    assert limiter.breaker.state == "closed"
    rest = await statuses(http, f"{gw.url}/open", 10, tenant)
    assert rest == [200] * 9 + [429]
    client = Redis.from_url(private_redis_server.url)
    try:
        assert await client.pttl("{rl:h:X-Tenant:t1}:burst") > 500_000
    finally:
        await client.aclose()


class FlakyStore:
    """A limiter store that fails, hangs, or answers, as the test says."""

    def __init__(self) -> None:
        self.mode = "fail"
        self.calls = 0

    def command(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> bytes:
        return b"decide"

    async def send(self, command: bytes) -> list[int]:
        self.calls += 1
        if self.mode == "fail":
            raise StoreError("down")
        if self.mode == "hang":
            await asyncio.Event().wait()
        return [1, 1, 1, 1_000_000, 0]  # admitted; one limit: admitted, 1 left, 1 s, 0

    async def close(self) -> None:
        pass


async def test_a_cancelled_probe_does_not_wedge_the_breaker() -> None:
    """The half-open probe's request is cancelled (its client went away: the server
    runs with ``handler_cancellation``). The breaker must probe again later, not stay
    half-open with a probe "in flight" forever."""
    spec = RateLimitsSpec.model_validate(
        {
            "store": "redis",
            "redis_url": "redis://127.0.0.1:1/0",
            "redis_timeout": "5s",
            "breaker": {"failures": 1, "open_for": "500ms"},
        }
    )
    clock = ManualClock()
    limiter = Limiter(spec, clock)
    store = FlakyStore()
    limiter.redis = store  # type: ignore[assignment]  # the breaker's calls, scripted
    command = store.command(["k"], (Limit("burst", "rate", 1.0, 5, 0.0),), 1)
    try:
        assert await limiter.decide_raw(command) is None
        assert limiter.breaker.state == "open"
        clock.advance(1.0)
        store.mode = "hang"
        probe = asyncio.ensure_future(limiter.decide_raw(command))
        await asyncio.sleep(0.01)
        assert store.calls == 2
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        store.mode = "ok"
        clock.advance(1.0)
        raw = await limiter.decide_raw(command)
        assert raw is not None, f"the breaker stayed {limiter.breaker.state}"
        assert raw[0] == 1
    finally:
        await limiter.local.close()


# -- config that is refused, with file, line and key path -------------------------------


def issues_of(main: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    return caught.value.issues


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} is not in {path}")


def one_issue(main: Path) -> ConfigIssue:
    issues = issues_of(main)
    assert len(issues) == 1, [str(issue) for issue in issues]
    return issues[0]


def limited_route(rate_limit: str, auth: str = "") -> str:
    return f"""
    routes:
      - path: /r
        {auth}
        proxy: {{url: 'http://127.0.0.1:9'}}
        rate_limit: {rate_limit}
    """


PLANS = """
rate_limits:
  plans:
    free: {rate: 10/s, burst: 3}
"""


@pytest.mark.parametrize("bad", ["fast", "10/fortnight"])
def test_a_plan_rate_that_does_not_parse(tmp_path: Path, bad: str) -> None:
    main = write_gateway_config(
        tmp_path,
        limited_route("{by: ip}"),
        top=f"rate_limits:\n  plans:\n    free:\n      rate: {bad}\n      burst: 3\n",
    )
    issue = one_issue(main)
    assert (issue.file, issue.line) == (str(main), line_of(main, f"rate: {bad}"))
    assert issue.key_path == "rate_limits.plans.free.rate"
    assert f"not a rate: {bad!r}" in issue.message


def test_a_route_limit_rate_that_does_not_parse(tmp_path: Path) -> None:
    main = write_gateway_config(
        tmp_path,
        limited_route("\n          by: ip\n          limit: {rate: 10/fortnight}"),
        top=PLANS,
    )
    issue = one_issue(main)
    routes = tmp_path / "routes.yaml"
    assert (issue.file, issue.line) == (str(routes), line_of(routes, "10/fortnight"))
    assert issue.key_path == "routes[0].rate_limit.limit.rate"
    assert "not a rate: '10/fortnight'" in issue.message


def test_a_contract_naming_an_unknown_plan(tmp_path: Path) -> None:
    main = write_gateway_config(
        tmp_path,
        limited_route("{by: ip}"),
        top=PLANS + "  consumers:\n    acme:\n      plan: gold\n",
    )
    issue = one_issue(main)
    assert (issue.file, issue.line) == (str(main), line_of(main, "plan: gold"))
    assert issue.key_path == "rate_limits.consumers.acme.plan"
    assert issue.message == "no plan named 'gold' (known: free)"


def test_an_unknown_anonymous_plan(tmp_path: Path) -> None:
    main = write_gateway_config(
        tmp_path,
        limited_route("\n          by: ip\n          anonymous_plan: anon"),
        top=PLANS,
    )
    issue = one_issue(main)
    routes = tmp_path / "routes.yaml"
    assert (issue.file, issue.line) == (str(routes), line_of(routes, "anonymous_plan: anon"))
    assert issue.key_path == "routes[0].rate_limit.anonymous_plan"
    assert issue.message == "no plan named 'anon' (known: free)"


@pytest.mark.parametrize("cost", [-1, 0])
def test_a_cost_below_one(tmp_path: Path, cost: int) -> None:
    main = write_gateway_config(
        tmp_path, limited_route(f"\n          by: ip\n          cost: {cost}"), top=PLANS
    )
    issue = one_issue(main)
    routes = tmp_path / "routes.yaml"
    assert (issue.file, issue.line) == (str(routes), line_of(routes, f"cost: {cost}"))
    assert issue.key_path == "routes[0].rate_limit.cost"
    assert "greater than or equal to 1" in issue.message


def test_a_cost_larger_than_a_burst(tmp_path: Path) -> None:
    main = write_gateway_config(
        tmp_path, limited_route("\n          by: ip\n          cost: 4"), top=PLANS
    )
    issue = one_issue(main)
    routes = tmp_path / "routes.yaml"
    assert (issue.file, issue.line) == (str(routes), line_of(routes, "cost: 4"))
    assert issue.key_path == "routes[0].rate_limit.cost"
    assert issue.message == (
        "cost 4 is more than the burst of plan 'free' (3): no request could ever pass"
    )


def test_a_cost_larger_than_the_default_burst(tmp_path: Path) -> None:
    # No burst written: one second's worth of the rate (2/s -> 2).
    main = write_gateway_config(
        tmp_path,
        limited_route("\n          by: ip\n          cost: 3"),
        top="rate_limits: {plans: {free: {rate: 2/s}}}",
    )
    assert one_issue(main).message.startswith("cost 3 is more than the burst of plan 'free' (2)")


def test_by_consumer_needs_auth(tmp_path: Path) -> None:
    main = write_gateway_config(tmp_path, limited_route("\n          by: consumer"), top=PLANS)
    issue = one_issue(main)
    routes = tmp_path / "routes.yaml"
    assert (issue.file, issue.line) == (str(routes), line_of(routes, "by: consumer"))
    assert issue.key_path == "routes[0].rate_limit.by"
    assert issue.message == "`by: consumer` needs `auth:` on the route"


def test_the_good_version_of_each_loads(tmp_path: Path) -> None:
    """The refusals above are about what they name: fixed, the same files load."""
    main = write_gateway_config(
        tmp_path,
        limited_route(
            "\n          by: consumer\n          cost: 3\n          anonymous_plan: free",
            auth="auth: [api_key]",
        ),
        top=PLANS + "  consumers:\n    acme:\n      plan: free\n",
    )
    loaded = load_config(main)
    route_limit = loaded.config.routes[0].rate_limit
    assert route_limit is not None
    assert route_limit.cost == 3
    assert loaded.config.rate_limits.plans["free"].rate == (10.0, 1.0)
    assert math.isclose(loaded.config.rate_limits.redis_timeout, 0.005)


def test_callers_without_a_known_plan_may_not_go_unlimited(tmp_path: Path) -> None:
    main = write_gateway_config(
        tmp_path,
        limited_route("{by: ip}"),
        top="rate_limits:\n  plans:\n    basic: {rate: 1/minute, burst: 1}\n",
    )
    issue = one_issue(main)
    assert issue.key_path == "routes[0].rate_limit"
    assert "plan 'free'" in issue.message
    assert "anonymous_plan" in issue.message


def test_a_cost_above_a_contract_burst(tmp_path: Path) -> None:
    main = write_gateway_config(
        tmp_path,
        limited_route("{by: consumer, cost: 5}", auth="auth: [api_key]"),
        top=PLANS.replace("burst: 3", "burst: 10") + "  consumers:\n    acme: {burst: 4}\n",
    )
    issue = one_issue(main)
    assert issue.key_path == "routes[0].rate_limit.cost"
    assert "the contract of 'acme' (4)" in issue.message


def test_a_contract_quota_must_be_whole(tmp_path: Path) -> None:
    main = write_gateway_config(
        tmp_path,
        limited_route("{by: ip}"),
        top=PLANS + "  consumers:\n    acme: {quota: 2.5/day}\n",
    )
    issue = one_issue(main)
    assert issue.key_path == "rate_limits.consumers.acme.quota"
    assert "whole number" in issue.message


async def test_redis_decisions_show_in_server_timing(
    start_gateway, http, private_redis_server
) -> None:
    gw = await start_gateway(
        limited_route("{by: ip, plan: false, limit: {rate: 100/s, burst: 100}}"),
        top=f"rate_limits:\n  store: redis\n  redis_url: {private_redis_server.url}\n"
        "  redis_timeout: 200ms\n",
    )
    async with http.get(f"{gw.url}/r") as response:
        timing = response.headers["Server-Timing"]
    entry = next(
        part.strip() for part in timing.split(",") if part.strip().startswith("ratelimit;")
    )
    assert float(entry.split("dur=")[1]) >= 0
