"""Idempotency keys over real HTTP: replay, 409 in flight, 422 on reuse, failures retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.context import ManualClock
from tests.conftest import spawn_gateway, stop, write_gateway_config
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

CALLS = web.AppKey("calls", list[bytes])
BEHAVIOUR = web.AppKey("behaviour", dict[str, object])


def orders_app() -> web.Application:
    async def create(request: web.Request) -> web.Response:
        body = await request.read()
        request.app[CALLS].append(body)
        behaviour = request.app[BEHAVIOUR]
        await asyncio.sleep(float(str(behaviour.get("delay", 0))))
        status = int(str(behaviour.get("status", 201)))
        return web.json_response(
            {"order": len(request.app[CALLS])}, status=status, headers={"Location": "/orders/1"}
        )

    app = web.Application()
    app[CALLS] = []
    app[BEHAVIOUR] = {}
    app.router.add_post("/orders", create)
    return app


def routes(url: str, extra: str = "") -> str:
    return f"""
    routes:
      - path: /v1/orders
        methods: [POST]
        idempotency: {{required: true, max_body_size: 1KiB {extra}}}
        proxy: {{url: '{url}', path: /orders}}
    """


@pytest.fixture
async def setup(aiohttp_server, start_gateway):
    app = orders_app()
    upstream = await aiohttp_server(app)
    url = str(upstream.make_url("")).rstrip("/")
    clock = ManualClock()
    gw = await start_gateway(routes(url), clock=clock)
    return gw, app, clock


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{value}"'}


async def test_same_key_same_request_is_replayed(setup, http) -> None:
    gw, app, _ = setup
    first = await http.post(f"{gw.url}/v1/orders", json={"a": 1, "b": 2}, headers=key("k1"))
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    # Same request, members in another order: the canonical JSON fingerprint matches.
    again = await http.post(
        f"{gw.url}/v1/orders",
        data=b'{ "b": 2, "a": 1 }',
        headers={**key("k1"), "Content-Type": "application/json"},
    )
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == "/orders/1"
    assert await again.read() == await first.read()
    assert again.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    assert len(app[CALLS]) == 1


async def test_same_key_different_request_is_422(setup, http) -> None:
    gw, _, _ = setup
    async with http.post(f"{gw.url}/v1/orders", json={"a": 1}, headers=key("k2")) as response:
        assert response.status == 201
    async with http.post(f"{gw.url}/v1/orders", json={"a": 2}, headers=key("k2")) as response:
        assert response.status == 422
        assert response.content_type == "application/problem+json"


async def test_in_flight_key_is_409(setup, http) -> None:
    gw, app, _ = setup
    app[BEHAVIOUR]["delay"] = 0.3
    first = asyncio.create_task(http.post(f"{gw.url}/v1/orders", json={}, headers=key("k3")))
    await asyncio.sleep(0.1)
    async with http.post(f"{gw.url}/v1/orders", json={}, headers=key("k3")) as response:
        assert response.status == 409
        assert response.headers["Retry-After"] == "1"
    assert (await first).status == 201
    assert len(app[CALLS]) == 1


async def test_server_errors_are_not_stored_but_4xx_are(setup, http) -> None:
    gw, app, _ = setup
    app[BEHAVIOUR]["status"] = 503
    async with http.post(f"{gw.url}/v1/orders", json={}, headers=key("k4")) as response:
        assert response.status == 503
    app[BEHAVIOUR]["status"] = 201
    async with http.post(f"{gw.url}/v1/orders", json={}, headers=key("k4")) as response:
        assert response.status == 201  # the key was released: the retry went through
        assert "Idempotent-Replayed" not in response.headers
    app[BEHAVIOUR]["status"] = 409
    async with http.post(f"{gw.url}/v1/orders", json={}, headers=key("k5")) as response:
        assert response.status == 409
    app[BEHAVIOUR]["status"] = 201
    async with http.post(f"{gw.url}/v1/orders", json={}, headers=key("k5")) as response:
        assert response.status == 409  # a 4xx is an answer: replayed
        assert response.headers["Idempotent-Replayed"] == "true"
    assert len(app[CALLS]) == 3


async def test_records_expire_after_the_ttl(setup, http) -> None:
    gw, app, clock = setup
    async with http.post(f"{gw.url}/v1/orders", json={}, headers=key("k6")) as response:
        assert response.status == 201
    clock.advance(86401)
    async with http.post(f"{gw.url}/v1/orders", json={}, headers=key("k6")) as response:
        assert "Idempotent-Replayed" not in response.headers
    assert len(app[CALLS]) == 2


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "needs an Idempotency-Key"),
        ({"Idempotency-Key": "unquoted"}, "quoted string"),
        ({"Idempotency-Key": '""'}, "quoted string"),
        ({"Idempotency-Key": '"a"b"'}, "quoted string"),
    ],
)
async def test_bad_or_missing_keys_are_400(setup, http, headers, detail) -> None:
    gw, app, _ = setup
    async with http.post(f"{gw.url}/v1/orders", json={}, headers=headers) as response:
        assert response.status == 400
        assert detail in orjson.loads(await response.read())["detail"]
    assert app[CALLS] == []


async def test_oversized_bodies_are_refused_up_front(setup, http) -> None:
    gw, app, _ = setup
    async with http.post(
        f"{gw.url}/v1/orders", json={"x": "y" * 2000}, headers=key("k7")
    ) as response:
        assert response.status == 413
        assert "Idempotency-Key" in orjson.loads(await response.read())["detail"]
    assert app[CALLS] == []


async def test_oversized_chunked_bodies_are_refused_too(setup, http) -> None:
    """No declared length: the body is counted (here it has all arrived at once)."""
    gw, app, _ = setup

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"x": "' + b"y" * 1500
        yield b'"}'

    async with http.post(
        f"{gw.url}/v1/orders",
        data=chunks(),
        headers={**key("k8"), "Content-Type": "application/json"},
    ) as response:
        assert response.status == 413
    assert app[CALLS] == []


@pytest.mark.parametrize(
    "content_type", ["Application/JSON; charset=utf-8", "application/merge-patch+json"]
)
async def test_json_media_types_are_fingerprinted_canonically(setup, http, content_type) -> None:
    gw, app, _ = setup
    headers = {**key(f"k9-{content_type}"), "Content-Type": content_type}
    async with http.post(f"{gw.url}/v1/orders", data=b'{"a":1,"b":2}', headers=headers) as first:
        assert first.status == 201
    async with http.post(
        f"{gw.url}/v1/orders", data=b'{ "b": 2, "a": 1 }', headers=headers
    ) as again:
        assert again.headers["Idempotent-Replayed"] == "true"
    assert len(app[CALLS]) == 1


async def test_other_bodies_are_fingerprinted_as_they_are(setup, http) -> None:
    """Not JSON (by its media type, or not parseable as JSON): its bytes are compared."""
    gw, app, _ = setup
    for content_type in ("text/plain", "application/json"):
        headers = {**key(f"k10-{content_type}"), "Content-Type": content_type}
        async with http.post(f"{gw.url}/v1/orders", data=b"{a: 1}", headers=headers) as first:
            assert first.status == 201
        async with http.post(f"{gw.url}/v1/orders", data=b"{a: 1}", headers=headers) as again:
            assert again.headers["Idempotent-Replayed"] == "true"
        async with http.post(f"{gw.url}/v1/orders", data=b"{a:  1}", headers=headers) as other:
            assert other.status == 422
    assert len(app[CALLS]) == 2


async def test_partial_fanout_answers_are_not_stored(aiohttp_server, start_gateway, http) -> None:
    """A fan-out answer missing a part (``Gateway-Partial``) is not an answer to keep."""
    calls: list[int] = []

    async def flaky(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"ok": True}, status=503 if len(calls) == 1 else 200)

    async def steady(request: web.Request) -> web.Response:
        return web.json_response({"id": 1})

    urls = {}
    for name, handler in (("user", steady), ("extra", flaky)):
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        urls[name] = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    gw = await start_gateway(
        f"""
    routes:
      - path: /v1/dash
        methods: [POST]
        idempotency: {{}}
        fanout:
          budget: 500ms
          backends:
            user: {{url: '{urls["user"]}/u', required: true}}
            extra: {{url: '{urls["extra"]}/e'}}
    """
    )
    async with http.post(f"{gw.url}/v1/dash", json={}, headers=key("k11")) as first:
        assert first.status == 200
        assert "extra" in first.headers["Gateway-Partial"]
    async with http.post(f"{gw.url}/v1/dash", json={}, headers=key("k11")) as again:
        assert again.status == 200
        assert "Idempotent-Replayed" not in again.headers
        assert "Gateway-Partial" not in again.headers
    async with http.post(f"{gw.url}/v1/dash", json={}, headers=key("k11")) as third:
        assert third.headers["Idempotent-Replayed"] == "true"  # the whole answer was kept
    assert len(calls) == 2


async def test_two_nodes_one_key_one_upstream_call(aiohttp_server, tmp_path: Path) -> None:
    app = orders_app()
    app[BEHAVIOUR]["delay"] = 0.3
    upstream = await aiohttp_server(app)
    url = str(upstream.make_url("")).rstrip("/")
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    processes = []
    try:
        config = write_gateway_config(
            tmp_path,
            routes(url),
            top=f"idempotency: {{store: redis, redis_url: '{redis.url}', redis_timeout: 500ms}}",
        )
        nodes = [await spawn_gateway(config) for _ in range(2)]
        processes = [process for process, _ in nodes]
        async with aiohttp.ClientSession() as session:

            async def post(port: int) -> tuple[int, str | None]:
                async with session.post(
                    f"http://127.0.0.1:{port}/v1/orders", json={"same": True}, headers=key("race")
                ) as response:
                    return response.status, response.headers.get("Idempotent-Replayed")

            results = await asyncio.gather(*(post(port) for _, port in nodes))
            statuses = sorted(status for status, _ in results)
            assert statuses == [201, 409]
            # Later, the answer is replayed by either node without a new upstream call.
            assert await post(nodes[1][1]) == (201, "true")
            assert await post(nodes[0][1]) == (201, "true")
        assert len(app[CALLS]) == 1
    finally:
        for process in processes:
            await stop(process)
        redis.stop()


async def test_a_lock_left_by_a_dead_node_expires(private_redis_server) -> None:
    from gateway.policies.idempotency.store import RedisIdempotencyStore

    store = RedisIdempotencyStore(private_redis_server.url, timeout=1.0)
    try:
        assert (await store.begin("k", "fp", lock_ttl=0.2)).state == "new"
        # The node that took the lock "dies" here: it never finishes nor abandons.
        assert (await store.begin("k", "fp", lock_ttl=0.2)).state == "in_flight"
        await asyncio.sleep(0.3)
        assert (await store.begin("k", "fp", lock_ttl=0.2)).state == "new"
    finally:
        await store.close()
