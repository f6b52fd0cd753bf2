"""Request validation over real HTTP: 400 vs 413 vs 415 vs 422, every violation listed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from gateway.config import ConfigError, load_config
from tests.conftest import write_gateway_config

pytestmark = pytest.mark.timeout(30)

SCHEMA = """
            validation:
              max_body_size: 2KiB
              body:
                type: object
                required: [sku, quantity]
                additionalProperties: false
                properties:
                  sku: {type: string, pattern: "^[A-Z]{4}-[0-9]+$"}
                  quantity: {type: integer, minimum: 1}
                  note: {type: string, maxLength: 20}
                  email: {type: string, format: email}
              query:
                type: object
                properties:
                  dry_run: {enum: ["true", "false"]}
"""


@pytest.fixture
async def gateway(aiohttp_server, start_gateway):
    received: list[bytes] = []

    async def create(request: web.Request) -> web.Response:
        body = await request.read()
        received.append(body)
        return web.json_response({"created": orjson.loads(body)}, status=201)

    app = web.Application()
    app.router.add_post("/orders", create)
    upstream = await aiohttp_server(app)
    url = str(upstream.make_url("")).rstrip("/")
    gw = await start_gateway(
        f"""
        routes:
          - path: /v1/orders
            methods: [POST]
            proxy: {{url: '{url}', path: /orders}}
{SCHEMA}
        """
    )
    gw.received = received
    return gw


async def test_a_valid_body_reaches_the_upstream_unchanged(gateway, http) -> None:
    body = b'{"sku": "HOME-1", "quantity": 2}'
    async with http.post(
        f"{gateway.url}/v1/orders", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 201
    assert gateway.received == [body]


async def test_every_violation_is_listed_with_its_pointer(gateway, http) -> None:
    async with http.post(
        f"{gateway.url}/v1/orders",
        json={"sku": "bad", "quantity": 0, "note": "x" * 30, "extra": 1},
    ) as response:
        assert response.status == 422
        assert response.content_type == "application/problem+json"
        problem = orjson.loads(await response.read())
    pointers = sorted(v["pointer"] for v in problem["violations"])
    assert pointers == ["", "/note", "/quantity", "/sku"]  # "" = the extra member
    assert all(v["message"] for v in problem["violations"])
    assert gateway.received == []


async def test_a_format_is_checked_and_its_violation_listed(gateway, http) -> None:
    """``format`` is an assertion whatever the schema's draft: a refused body must also
    name what broke it (a decision and a listing by two libraries once disagreed here:
    422 with no violation)."""
    order = {"sku": "HOME-1", "quantity": 1}
    async with http.post(f"{gateway.url}/v1/orders", json={**order, "email": "nope"}) as r:
        assert r.status == 422
        problem = orjson.loads(await r.read())
    assert [v["pointer"] for v in problem["violations"]] == ["/email"]
    async with http.post(f"{gateway.url}/v1/orders", json={**order, "email": "a@b.example"}) as r:
        assert r.status == 201


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b'{"sku": "HOME-1", "quantity": 1}', "text/plain", 415),
        (
            b'{"sku": "HOME-1", "quantity": 1, "note": "' + b"x" * 3000 + b'"}',
            "application/json",
            413,
        ),
    ],
)
async def test_bad_bodies(gateway, http, body, content_type, status) -> None:
    async with http.post(
        f"{gateway.url}/v1/orders", data=body, headers={"Content-Type": content_type}
    ) as response:
        assert response.status == status
        assert response.content_type == "application/problem+json"
    assert gateway.received == []


async def test_a_chunked_body_over_the_limit_is_413(gateway, http) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 500

    async with http.post(
        f"{gateway.url}/v1/orders", data=chunks(), headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 413


async def test_query_parameters_are_checked(gateway, http) -> None:
    async with http.post(
        f"{gateway.url}/v1/orders?dry_run=maybe", json={"sku": "HOME-1", "quantity": 1}
    ) as r:
        assert r.status == 422
        problem = orjson.loads(await r.read())
    assert problem["where"] == "query"
    assert problem["violations"][0]["pointer"] == "/dry_run"


def test_a_broken_schema_names_the_route_and_the_schema_path(tmp_path) -> None:
    main = write_gateway_config(
        tmp_path,
        """
        routes:
          - path: /v1/orders
            methods: [POST]
            proxy: {url: 'http://127.0.0.1:9'}
            validation:
              body:
                type: object
                properties:
                  quantity: {type: integr}
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    issue = caught.value.issues[0]
    assert issue.key_path == "routes[0].validation.body"
    assert issue.file.endswith("routes.yaml")
    assert "/properties/quantity/type" in issue.message
