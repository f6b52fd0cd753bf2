"""Prometheus metrics over real HTTP: known traffic in, exact figures out of /metrics."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.context import ManualClock
from gateway.metrics.histogram import SECONDS_BUCKETS
from tests.conftest import RunningGateway, free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(30)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def admin_top(tmp_path: Path, extra: str = "") -> str:
    """An admin listener (it needs the credential store) and a known token."""
    (tmp_path / "admin-token").write_text("test-admin-token\n")
    return textwrap.dedent(f"""
    auth:
      sqlite_path: {tmp_path / "credentials.db"}
      pepper_file: {tmp_path / "pepper.json"}
    admin:
      enabled: true
      listen: {{host: 127.0.0.1, port: 0}}
      token_env: GATEWAY_TEST_METRICS_TOKEN_NEVER_SET
      token_file: {tmp_path / "admin-token"}
    """) + textwrap.dedent(extra)


TOKEN = {"Authorization": "Bearer test-admin-token"}


async def scrape(http: aiohttp.ClientSession, gw: RunningGateway) -> Samples:
    """Every sample of ``GET /metrics``, by name and labels."""
    url = f"http://127.0.0.1:{gw.gateway.admin_port}/metrics"
    async with http.get(url, headers=TOKEN) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = (await response.read()).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def of_name(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(aiohttp_server: Any, reply: Reply) -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", reply)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def json_reply(payload: object, delay: float = 0.0) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    return reply


async def get_status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        await response.read()
        return response.status


# -- the endpoint ---------------------------------------------------------------------------


async def test_metrics_needs_the_admin_token_and_parses(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    url = await serve(aiohttp_server, json_reply({}))
    gw = await start_gateway(
        f"routes:\n  - {{name: one, path: /one, proxy: {{url: '{url}', timeout: 2s}}}}\n",
        top=admin_top(tmp_path),
    )
    endpoint = f"http://127.0.0.1:{gw.gateway.admin_port}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-admin-token"}):
        async with http.get(endpoint, headers=headers) as response:
            assert response.status == 401
            assert "WWW-Authenticate" in response.headers
    samples = await scrape(http, gw)
    # Families are there before any traffic, and the configured budget is published.
    assert value(samples, "gateway_route_budget_seconds", route="one") == 2.0
    assert value(samples, "gateway_config_reloads_total", result="ok") == 0
    assert value(samples, "gateway_config_reloads_total", result="failed") == 0
    assert of_name(samples, "gateway_requests_seconds_count") == {}
    # The process's own figures come along.
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)


# -- requests and upstream calls ----------------------------------------------------------


async def test_request_histograms_by_route_and_status(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404 if request.path == "/missing" else 200, text="x")

    url = await serve(aiohttp_server, reply)
    gw = await start_gateway(
        f"""
        upstreams:
          users: {{targets: ['{url}']}}
        routes:
          - name: items
            path: /items/{{id}}
            proxy: {{upstream: users, path: '/{{id}}'}}
        """,
        top=admin_top(tmp_path),
    )
    for path in ["/items/a", "/items/b", "/items/c", "/items/missing", "/items/missing"]:
        await get_status(http, gw.url + path)
    assert await get_status(http, gw.url + "/nowhere") == 404

    samples = await scrape(http, gw)
    assert of_name(samples, "gateway_requests_seconds_count") == {
        frozenset({("route", "items"), ("status", "200")}): 3,
        frozenset({("route", "items"), ("status", "404")}): 2,
        frozenset({("route", "(none)"), ("status", "404")}): 1,
    }
    # The buckets are the documented ones, cumulative, ending at +Inf = count.
    buckets = {
        dict(labels)["le"]: v
        for labels, v in of_name(samples, "gateway_requests_seconds_bucket").items()
        if ("status", "200") in labels
    }
    assert list(buckets) == [*(repr(float(b)) for b in SECONDS_BUCKETS), "+Inf"]
    counts = list(buckets.values())
    assert counts == sorted(counts)
    assert counts[-1] == 3
    assert (value(samples, "gateway_requests_seconds_sum", route="items", status="200") or 0) > 0
    # Each upstream call, under the upstream's name.
    assert of_name(samples, "gateway_upstream_seconds_count") == {
        frozenset({("route", "items"), ("backend", "users"), ("outcome", "ok")}): 5,
    }


async def test_a_fanout_version_behind_a_header_dispatcher_records_its_partials(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    """v1 is a proxy, v2 a fan-out with a part that times out: each version's requests
    are recorded under its own route's name, v2's with its partial answers and budget
    use."""
    fast = await serve(aiohttp_server, json_reply({"id": 1}))
    slow = await serve(aiohttp_server, json_reply({"late": True}, delay=2.0))
    gw = await start_gateway(
        f"""
        routes:
          - name: cat-v1
            path: /cat/{{id}}
            api: cat
            version: "1"
            proxy: {{url: '{fast}'}}
          - name: cat-v2
            path: /cat/{{id}}
            api: cat
            version: "2"
            fanout:
              budget: 100ms
              backends:
                user: {{url: '{fast}/u/{{id}}', required: true}}
                slow: {{url: '{slow}/s'}}
        """,
        top=admin_top(
            tmp_path,
            """
            apis:
              cat:
                strategy: header
                header: API-Version
                default: "1"
                versions: {"1": {}, "2": {}}
            """,
        ),
    )
    for version in ("1", "2", "2", "1", "2"):
        async with http.get(f"{gw.url}/cat/7", headers={"API-Version": version}) as response:
            assert response.status == 200
            assert ("Gateway-Partial" in response.headers) == (version == "2")

    samples = await scrape(http, gw)
    assert of_name(samples, "gateway_partial_responses_total") == {
        frozenset({("route", "cat-v2"), ("missing", "slow")}): 3
    }
    assert value(samples, "gateway_fanout_budget_used_ratio_count", route="cat-v2") == 3
    assert value(samples, "gateway_requests_seconds_count", route="cat-v1", status="200") == 2
    assert value(samples, "gateway_requests_seconds_count", route="cat-v2", status="200") == 3


async def test_fanout_timeouts_partials_and_budget_used(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    fast = await serve(aiohttp_server, json_reply({"id": 1}))
    slow = await serve(aiohttp_server, json_reply({"late": True}, delay=2.0))
    gw = await start_gateway(
        f"""
        routes:
          - name: dash
            path: /dash/{{id}}
            fanout:
              budget: 100ms
              backends:
                user: {{url: '{fast}/u/{{id}}', required: true}}
                slow: {{url: '{slow}/s'}}
        """,
        top=admin_top(tmp_path),
    )
    statuses = await asyncio.gather(*(get_status(http, f"{gw.url}/dash/{i}") for i in range(10)))
    assert statuses == [200] * 10

    samples = await scrape(http, gw)
    assert of_name(samples, "gateway_partial_responses_total") == {
        frozenset({("route", "dash"), ("missing", "slow")}): 10
    }
    assert of_name(samples, "gateway_upstream_seconds_count") == {
        frozenset({("route", "dash"), ("backend", "user"), ("outcome", "ok")}): 10,
        frozenset({("route", "dash"), ("backend", "slow"), ("outcome", "timeout")}): 10,
    }
    # A timed-out call lasted the whole budget: none of them under 75 ms.
    labels = {"route": "dash", "backend": "slow", "outcome": "timeout"}
    assert value(samples, "gateway_upstream_seconds_bucket", le="0.075", **labels) == 0
    assert value(samples, "gateway_requests_seconds_count", route="dash", status="200") == 10
    # Every request waited out its budget: used ratios of 1 and a little over.
    assert value(samples, "gateway_fanout_budget_used_ratio_count", route="dash") == 10
    assert value(samples, "gateway_fanout_budget_used_ratio_bucket", route="dash", le="0.9") == 0
    assert value(samples, "gateway_fanout_budget_used_ratio_bucket", route="dash", le="2.0") == 10
    assert value(samples, "gateway_route_budget_seconds", route="dash") == 0.1


async def fine_and_broken(aiohttp_server: Any) -> tuple[str, str]:
    """Two backends: one answers ``{}``, the other 500."""

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="no")

    return await serve(aiohttp_server, json_reply({})), await serve(aiohttp_server, broken)


async def test_a_failed_fanout_is_not_a_partial_and_status_answers_are_errors(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    fine, bad = await fine_and_broken(aiohttp_server)
    gw = await start_gateway(
        f"""
        routes:
          - name: needs
            path: /needs
            fanout:
              backends:
                must: {{url: '{bad}/m', required: true}}
                other: {{url: '{fine}/o'}}
          - name: optional
            path: /optional
            fanout:
              backends:
                extra: {{url: '{bad}/e'}}
                other: {{url: '{fine}/o'}}
        """,
        top=admin_top(tmp_path),
    )
    assert [await get_status(http, f"{gw.url}/needs") for _ in range(3)] == [502] * 3
    assert [await get_status(http, f"{gw.url}/optional") for _ in range(2)] == [200] * 2
    samples = await scrape(http, gw)
    assert of_name(samples, "gateway_partial_responses_total") == {
        frozenset({("route", "optional"), ("missing", "extra")}): 2
    }
    assert value(samples, "gateway_requests_seconds_count", route="needs", status="502") == 3
    # A non-2xx answer from a backend is a failed call: outcome "error".
    assert (
        value(
            samples,
            "gateway_upstream_seconds_count",
            route="optional",
            backend="extra",
            outcome="error",
        )
        == 2
    )


# -- policies -------------------------------------------------------------------------------


async def test_cache_results_by_route(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    url = await serve(aiohttp_server, json_reply({"v": 1}))
    gw = await start_gateway(
        f"""
        routes:
          - name: cached
            path: /c/{{id}}
            cache: {{ttl: 60s}}
            proxy: {{url: '{url}'}}
        """,
        top=admin_top(tmp_path, "cache: {}\n"),
    )
    for path in ["/c/1", "/c/1", "/c/1", "/c/1", "/c/2", "/c/2"]:
        assert await get_status(http, gw.url + path) == 200
    samples = await scrape(http, gw)
    assert of_name(samples, "gateway_cache_results_total") == {
        frozenset({("route", "cached"), ("result", "miss")}): 2,
        frozenset({("route", "cached"), ("result", "hit")}): 4,
    }
    # Only the misses went upstream.
    assert value(
        samples, "gateway_upstream_seconds_count", route="cached", backend="upstream", outcome="ok"
    ) == (2)


async def test_rate_limit_decisions_by_outcome(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    url = await serve(aiohttp_server, json_reply({}))
    gw = await start_gateway(
        f"""
        routes:
          - name: limited
            path: /l
            proxy: {{url: '{url}'}}
            rate_limit: {{by: ip}}
          - name: shadow
            path: /s
            proxy: {{url: '{url}'}}
            rate_limit: {{by: ip, shadow: true}}
        """,
        top=admin_top(tmp_path, "rate_limits: {plans: {free: {rate: 1/minute, burst: 3}}}\n"),
        clock=ManualClock(),
    )
    assert [await get_status(http, f"{gw.url}/l") for _ in range(6)] == [200] * 3 + [429] * 3
    assert [await get_status(http, f"{gw.url}/s") for _ in range(5)] == [200] * 5
    samples = await scrape(http, gw)
    # The plan's budget is the subject's on every route: the shadow route's first
    # requests find it spent already.
    assert of_name(samples, "gateway_ratelimit_decisions_total") == {
        frozenset({("route", "limited"), ("outcome", "admitted")}): 3,
        frozenset({("route", "limited"), ("outcome", "refused")}): 3,
        frozenset({("route", "shadow"), ("outcome", "shadow_refused")}): 5,
    }
    assert value(samples, "gateway_requests_seconds_count", route="limited", status="429") == 3


async def test_store_errors_and_breaker_state(
    start_gateway: Any,
    http: aiohttp.ClientSession,
    aiohttp_server: Any,
    tmp_path: Path,
    private_redis_server: RedisServer,
) -> None:
    url = await serve(aiohttp_server, json_reply({}))
    limits = f"""
    rate_limits:
      store: redis
      redis_url: '{private_redis_server.url}'
      redis_timeout: 50ms
      breaker: {{failures: 2, open_for: 60s}}
      plans: {{free: {{rate: 10/s}}}}
    """
    gw = await start_gateway(
        f"routes:\n  - {{name: r, path: /r, proxy: {{url: '{url}'}}, rate_limit: {{by: ip}}}}\n",
        top=admin_top(tmp_path, limits),
        clock=ManualClock(),
    )
    assert await get_status(http, f"{gw.url}/r") == 200
    samples = await scrape(http, gw)
    assert value(samples, "gateway_breaker_state", breaker="ratelimit") == 0
    assert value(samples, "gateway_store_errors_total", store="ratelimit") == 0

    await private_redis_server.astop()
    assert [await get_status(http, f"{gw.url}/r") for _ in range(5)] == [200] * 5
    samples = await scrape(http, gw)
    # Two failures open the breaker; the next three never ask the store.
    assert value(samples, "gateway_store_errors_total", store="ratelimit") == 2
    assert value(samples, "gateway_breaker_state", breaker="ratelimit") == 1
    assert of_name(samples, "gateway_ratelimit_decisions_total") == {
        frozenset({("route", "r"), ("outcome", "admitted")}): 1,
        frozenset({("route", "r"), ("outcome", "fail_open")}): 5,
    }
    assert value(samples, "gateway_store_errors_total", store="credentials") == 0
    assert value(samples, "gateway_store_errors_total", store="idempotency") == 0


async def test_idempotency_store_errors(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    url = await serve(aiohttp_server, json_reply({}))
    gw = await start_gateway(
        f"""
        routes:
          - name: orders
            path: /orders
            methods: [POST]
            idempotency: {{}}
            proxy: {{url: '{url}'}}
        """,
        top=admin_top(
            tmp_path,
            f"idempotency: {{store: redis, redis_url: 'redis://127.0.0.1:{free_port()}/0'}}\n",
        ),
    )
    for key in ("a", "b", "c"):
        async with http.post(
            f"{gw.url}/orders", data=b"{}", headers={"Idempotency-Key": f'"{key}"'}
        ) as response:
            assert response.status == 503
    samples = await scrape(http, gw)
    # Each refused request failed to take its key; nothing else was asked of the store.
    assert value(samples, "gateway_store_errors_total", store="idempotency") == 3
    assert value(samples, "gateway_requests_seconds_count", route="orders", status="503") == 3


# -- reloads --------------------------------------------------------------------------------


async def test_reload_counts_and_counts_that_survive_a_reload(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    url = await serve(aiohttp_server, json_reply({}))
    route = f"routes:\n  - {{name: one, path: /one, proxy: {{url: '{url}', timeout: {{t}}}}}}\n"
    gw = await start_gateway(route.replace("{t}", "2s"), top=admin_top(tmp_path))
    for _ in range(2):
        await get_status(http, gw.url + "/one")

    gw.write_routes("routes:\n  - {name: one, path: /one, proxy: {timeout: fast}}\n")
    assert await gw.gateway.reload() is False
    gw.write_routes(route.replace("{t}", "3s"))
    assert await gw.gateway.reload() is True
    for _ in range(3):
        await get_status(http, gw.url + "/one")

    samples = await scrape(http, gw)
    assert value(samples, "gateway_config_reloads_total", result="ok") == 1
    assert value(samples, "gateway_config_reloads_total", result="failed") == 1
    assert value(samples, "gateway_requests_seconds_count", route="one", status="200") == 5
    assert value(samples, "gateway_route_budget_seconds", route="one") == 3.0


async def test_metrics_off_records_no_requests(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    url = await serve(aiohttp_server, json_reply({}))
    gw = await start_gateway(
        f"routes:\n  - {{name: one, path: /one, proxy: {{url: '{url}'}}}}\n",
        top=admin_top(tmp_path, "metrics: {enabled: false}\n"),
    )
    assert await get_status(http, gw.url + "/one") == 200
    assert await get_status(http, gw.url + "/nowhere") == 404
    samples = await scrape(http, gw)
    assert of_name(samples, "gateway_requests_seconds_count") == {}
    assert of_name(samples, "gateway_upstream_seconds_count") == {}
    # What is not per request is still there.
    assert value(samples, "gateway_route_budget_seconds", route="one") == 30.0


async def test_an_answer_missing_two_parts_is_one_partial_answer_and_two_missing_parts(
    start_gateway: Any, http: aiohttp.ClientSession, aiohttp_server: Any, tmp_path: Path
) -> None:
    fine, bad = await fine_and_broken(aiohttp_server)
    gw = await start_gateway(
        f"""
        routes:
          - name: two
            path: /two
            fanout:
              backends:
                first: {{url: '{bad}/a'}}
                second: {{url: '{bad}/b'}}
                other: {{url: '{fine}/o'}}
          - name: whole
            path: /whole
            fanout:
              backends:
                other: {{url: '{fine}/o'}}
        """,
        top=admin_top(tmp_path),
    )
    assert [await get_status(http, f"{gw.url}/two") for _ in range(3)] == [200] * 3
    assert await get_status(http, f"{gw.url}/whole") == 200
    samples = await scrape(http, gw)
    # A fan-out route that answered in full has its zero: its partial share exists.
    assert of_name(samples, "gateway_partial_answers_total") == {
        frozenset({("route", "two")}): 3,
        frozenset({("route", "whole")}): 0,
    }
    assert of_name(samples, "gateway_partial_responses_total") == {
        frozenset({("route", "two"), ("missing", "first")}): 3,
        frozenset({("route", "two"), ("missing", "second")}): 3,
    }


async def test_token_endpoint_store_errors_count_as_credential_store_errors(
    start_gateway: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    private_redis_server: RedisServer,
) -> None:
    (tmp_path / "admin-token").write_text("test-admin-token\n")
    gw = await start_gateway(
        "routes: []\n",
        top=textwrap.dedent(f"""
        auth:
          store: redis
          redis_url: '{private_redis_server.url}'
          pepper_file: {tmp_path / "pepper.json"}
          oauth: {{enabled: true}}
        admin:
          enabled: true
          listen: {{host: 127.0.0.1, port: 0}}
          token_env: GATEWAY_TEST_METRICS_TOKEN_NEVER_SET
          token_file: {tmp_path / "admin-token"}
        """),
    )
    assert value(await scrape(http, gw), "gateway_store_errors_total", store="credentials") == 0
    await private_redis_server.astop()
    for _ in range(2):
        async with http.post(
            f"{gw.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": aiohttp.encode_basic_auth("some-client", "some-secret")},
        ) as response:
            assert response.status == 503
            assert (await response.json())["error"] == "temporarily_unavailable"
    samples = await scrape(http, gw)
    assert value(samples, "gateway_store_errors_total", store="credentials") == 2
