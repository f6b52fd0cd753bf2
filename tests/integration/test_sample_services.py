"""The sample downstream services, over real HTTP with real servers on ephemeral ports."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from examples.services import (
    KINDS,
    Behaviour,
    ServiceGroup,
    add_arguments,
    behaviours_from_args,
    parse_duration_ms,
    run_from_args,
    start_services,
)

USER_KEYS = {"id", "name", "email", "tier", "created_at", "country"}
ORDER_KEYS = {"id", "sku", "quantity", "total_cents", "currency", "status", "placed_at"}
STOCK_KEYS = {"sku", "available", "warehouse", "updated_at"}
RECOMMENDATION_KEYS = {"sku", "score", "reason"}
NOTIFICATION_KEYS = {"id", "type", "title", "read", "created_at"}


@pytest.fixture
async def services() -> AsyncIterator[ServiceGroup]:
    group = await start_services("127.0.0.1", dict.fromkeys(KINDS, 0), seed=7)
    try:
        yield group
    finally:
        await group.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        assert response.content_type == "application/json"
        return response.status, orjson.loads(await response.read())


async def raw_get(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url) as response:
        assert response.status == 200
        return await response.read()


def parse_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("kind", "path", "keys", "item_keys"),
    [
        ("users", "/users/42", USER_KEYS, None),
        ("users", "/users?limit=3", {"items"}, USER_KEYS),
        ("orders", "/orders?user=42", {"user", "items"}, ORDER_KEYS),
        ("orders", "/orders/ord_123", ORDER_KEYS, None),
        ("recommendations", "/recommendations?user=42", {"user", "items"}, RECOMMENDATION_KEYS),
        ("inventory", "/inventory/BOOK-12345", STOCK_KEYS, None),
        ("inventory", "/inventory?skus=a,b,c", {"items"}, STOCK_KEYS),
        ("notifications", "/notifications?user=42", {"user", "unread", "items"}, NOTIFICATION_KEYS),
    ],
)
async def test_main_gets_answer_deterministic_json(
    services: ServiceGroup,
    http: aiohttp.ClientSession,
    kind: str,
    path: str,
    keys: set[str],
    item_keys: set[str] | None,
) -> None:
    status, body = await call(http, "GET", services.url(kind) + path)
    assert status == 200
    assert set(body) == keys
    if item_keys is not None:
        assert body["items"]
        assert all(set(item) == item_keys for item in body["items"])
    # Bodies depend on the ids alone: not on the request count, the server or its seed.
    other = await start_services("127.0.0.1", {kind: 0}, seed=8)
    try:
        first = await raw_get(http, services.url(kind) + path)
        assert await raw_get(http, services.url(kind) + path) == first
        assert await raw_get(http, other.url(kind) + path) == first
    finally:
        await other.close()


async def test_different_ids_give_different_bodies(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    url = services.url("users")
    assert await raw_get(http, url + "/users/1") != await raw_get(http, url + "/users/2")


async def test_lists_agree_with_single_lookups(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    users, orders = services.url("users"), services.url("orders")
    _, listed = await call(http, "GET", users + "/users?limit=2")
    assert listed["items"] == [(await call(http, "GET", f"{users}/users/{n}"))[1] for n in (1, 2)]

    _, by_user = await call(http, "GET", orders + "/orders?user=42")
    first = by_user["items"][0]
    assert (await call(http, "GET", f"{orders}/orders/{first['id']}"))[1] == first

    inventory = services.url("inventory")
    _, stock = await call(http, "GET", inventory + "/inventory?skus=a,b")
    assert stock["items"][1] == (await call(http, "GET", inventory + "/inventory/b"))[1]


async def test_recommendations_are_ranked_and_limit_cuts_a_prefix(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    url = services.url("recommendations") + "/recommendations?user=9"
    _, five = await call(http, "GET", url + "&limit=5")
    _, two = await call(http, "GET", url + "&limit=2")
    scores = [item["score"] for item in five["items"]]
    assert len(scores) == 5
    assert scores == sorted(scores, reverse=True)
    assert two["items"] == five["items"][:2]


async def test_notifications_count_unread(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    _, body = await call(http, "GET", services.url("notifications") + "/notifications?user=7")
    assert body["user"] == "7"
    assert body["unread"] == sum(not item["read"] for item in body["items"])


@pytest.mark.parametrize(
    ("kind", "path", "payload", "status"),
    [
        ("users", "/users", {"name": "Ada Lovelace", "email": "ada@example.com"}, 201),
        ("orders", "/orders", {"sku": "BOOK-12345", "quantity": 2}, 201),
        ("notifications", "/notifications", {"user": "42", "title": "Hello"}, 202),
    ],
)
async def test_posts_create(
    services: ServiceGroup,
    http: aiohttp.ClientSession,
    kind: str,
    path: str,
    payload: dict[str, Any],
    status: int,
) -> None:
    got_status, body = await call(http, "POST", services.url(kind) + path, json=payload)
    assert got_status == status
    assert isinstance(body["id"], str)
    assert body["id"]
    if kind != "notifications":
        assert payload.items() <= body.items()


async def test_created_order_is_priced_like_generated_ones(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    orders = services.url("orders")
    _, existing = await call(http, "GET", orders + "/orders/ord_123")
    order = {"sku": existing["sku"], "quantity": 1}
    _, created = await call(http, "POST", orders + "/orders", json=order)
    assert created["total_cents"] * existing["quantity"] == existing["total_cents"]
    assert created["status"] == "placed"


@pytest.mark.parametrize(
    ("kind", "method", "path", "payload", "field"),
    [
        ("orders", "GET", "/orders", None, "user"),
        ("users", "GET", "/users?limit=0", None, "limit"),
        ("users", "GET", "/users?limit=many", None, "limit"),
        ("inventory", "GET", "/inventory?skus=,", None, "skus"),
        ("users", "POST", "/users", {"name": "Ada"}, "email"),
        ("orders", "POST", "/orders", {"sku": "BOOK-1", "quantity": 0}, "quantity"),
        ("orders", "POST", "/orders", {"sku": "BOOK-1", "quantity": True}, "quantity"),
        ("notifications", "POST", "/notifications", [1, 2], "body"),
    ],
)
async def test_bad_requests_name_the_field(
    services: ServiceGroup,
    http: aiohttp.ClientSession,
    kind: str,
    method: str,
    path: str,
    payload: Any,
    field: str,
) -> None:
    status, body = await call(http, method, services.url(kind) + path, json=payload)
    assert status == 400
    assert body["field"] == field
    assert body["error"]


@pytest.mark.parametrize("kind", KINDS)
async def test_healthz(services: ServiceGroup, http: aiohttp.ClientSession, kind: str) -> None:
    assert await call(http, "GET", services.url(kind) + "/healthz") == (
        200,
        {"status": "ok", "service": kind},
    )


async def test_unknown_path_and_method_answer_json(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    users = services.url("users")
    assert (await call(http, "GET", users + "/orders?user=1"))[0] == 404
    status, body = await call(http, "GET", users + "/no/such/path")
    assert (status, body["status"]) == (404, 404)
    assert (await call(http, "DELETE", users + "/users/1"))[0] == 405


async def test_control_reports_behaviour(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    assert await call(http, "GET", services.url("orders") + "/_control") == (
        200,
        {"service": "orders", "latency": "0ms", "p99": "0ms", "error_rate": 0.0},
    )


async def test_control_latency_delays_requests(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    url = services.url("orders")
    status, body = await call(http, "PUT", url + "/_control", json={"latency": "200ms", "p99": 200})
    assert (status, body["latency"], body["p99"]) == (200, "200ms", "200ms")
    started = time.perf_counter()
    assert (await call(http, "GET", url + "/orders/ord_1"))[0] == 200
    assert time.perf_counter() - started >= 0.15


async def test_control_latency_alone_keeps_the_distribution_shape(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    control = services.url("inventory") + "/_control"
    await call(http, "PUT", control, json={"latency": "0.01s", "p99": "30ms"})
    _, body = await call(http, "POST", control, json={"latency": 20})
    assert (body["latency"], body["p99"]) == ("20ms", "60ms")
    _, body = await call(http, "PUT", control, json={"latency": "10ms"})
    assert (body["latency"], body["p99"]) == ("10ms", "30ms")


async def test_error_rate_one_fails_every_request_but_control(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    url = services.url("users")
    assert (await call(http, "PUT", url + "/_control", json={"error_rate": 1.0}))[0] == 200
    for path in ("/users/1", "/users?limit=2", "/healthz", "/no/such/path"):
        for _ in range(3):
            status, body = await call(http, "GET", url + path)
            assert status in (500, 503)
            assert body["service"] == "users"
            assert body["error"]
    assert (await call(http, "PUT", url + "/_control", json={"error_rate": 0}))[0] == 200
    assert (await call(http, "GET", url + "/users/1"))[0] == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"latency": "fast"}, "latency"),
        ({"latency": -5}, "latency"),
        ({"p99": True}, "p99"),
        ({"latency": "50ms", "p99": "10ms"}, "p99"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_rate": "often"}, "error_rate"),
        ({"latncy": "5ms"}, "latncy"),
        ("500ms", "body"),
    ],
)
async def test_bad_control_input_names_the_field(
    services: ServiceGroup, http: aiohttp.ClientSession, payload: Any, field: str
) -> None:
    control = services.url("recommendations") + "/_control"
    status, body = await call(http, "PUT", control, json=payload)
    assert (status, body["field"]) == (400, field)
    assert field in body["error"]
    # A rejected update changes nothing.
    assert (await call(http, "GET", control))[1]["latency"] == "0ms"


async def test_invalid_json_control_body(
    services: ServiceGroup, http: aiohttp.ClientSession
) -> None:
    control = services.url("users") + "/_control"
    status, body = await call(http, "PUT", control, data=b"{latency")
    assert (status, body["field"]) == (400, "body")


@pytest.mark.parametrize(
    ("value", "ms"),
    [("500ms", 500.0), ("1.5s", 1500.0), (" 2 S ", 2000.0), ("20", 20.0), (250, 250.0), (0, 0.0)],
)
def test_parse_duration_ms(value: object, ms: float) -> None:
    assert parse_duration_ms(value) == ms


@pytest.mark.parametrize("value", ["fast", "1h", "-5ms", "", -1, True, None, float("nan")])
def test_parse_duration_ms_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(value)


def test_flags_set_behaviour_per_kind() -> None:
    args = parse_flags(
        "--latency=orders=500ms",
        "--p99=orders=2s",
        "--latency=users=30ms",
        "--error-rate=inventory=0.25",
        "--default-latency=5ms",
    )
    behaviours = behaviours_from_args(args)
    assert behaviours["orders"] == Behaviour(0.5, 2.0, 0.0)
    assert behaviours["inventory"] == Behaviour(0.005, 0.008, 0.25)
    assert behaviours["users"].p99_s == pytest.approx(0.048)
    assert behaviours_from_args(parse_flags())["notifications"] == Behaviour(0.003, 0.008, 0.0)


@pytest.mark.parametrize(
    "argv",
    [["--latency", "payments=5ms"], ["--latency", "orders"], ["--error-rate", "users=2"]],
)
def test_bad_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_flags(*argv)


def test_conflicting_flags_name_the_kind() -> None:
    args = parse_flags("--latency", "orders=1s", "--p99", "orders=10ms")
    with pytest.raises(ValueError, match="orders"):
        behaviours_from_args(args)


async def test_run_from_args_serves_until_cancelled(
    http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse_flags(
        "--only=users,orders", "--port=users=0", "--port=orders=0", "--default-latency=0"
    )
    task = asyncio.create_task(run_from_args(args))
    lines: list[str] = []
    async with asyncio.timeout(2):
        while len(lines) < 2 and not task.done():
            await asyncio.sleep(0.01)
            lines += capsys.readouterr().out.splitlines()
    urls = dict(line.split() for line in lines)
    assert list(urls) == ["users", "orders"]
    assert (await call(http, "GET", urls["orders"] + "/healthz"))[0] == 200

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, "GET", urls["orders"] + "/healthz")
