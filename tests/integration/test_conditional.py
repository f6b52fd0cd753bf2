"""Conditional requests over real HTTP (RFC 9110 section 13): ETags, 304, If-Match."""

from __future__ import annotations

import re

import orjson
import pytest
from aiohttp import web

pytestmark = pytest.mark.timeout(30)

WRITES = web.AppKey("writes", list[str])


def items_app(
    upstream_etag: str | None = None, last_modified: str | None = None
) -> web.Application:
    items: dict[str, dict[str, object]] = {"1": {"id": "1", "version": 1}}
    writes: list[str] = []

    async def get(request: web.Request) -> web.Response:
        item = items.get(request.match_info["id"])
        if item is None:
            return web.json_response({"error": "not found"}, status=404)
        headers = {"Cache-Control": "max-age=60", "Vary": "Accept"}
        if upstream_etag:
            headers["ETag"] = upstream_etag
        if last_modified:
            headers["Last-Modified"] = last_modified
        return web.Response(
            body=orjson.dumps(item), content_type="application/json", headers=headers
        )

    async def put(request: web.Request) -> web.Response:
        item = items.setdefault(
            request.match_info["id"], {"id": request.match_info["id"], "version": 0}
        )
        item["version"] = int(str(item["version"])) + 1
        writes.append(request.headers.get("If-Match", ""))
        return web.json_response(item)

    app = web.Application()
    app.router.add_get("/items/{id}", get)
    app.router.add_put("/items/{id}", put)
    app[WRITES] = writes
    return app


async def gateway_for(start_gateway, aiohttp_server, app: web.Application, conditional: str = "{}"):
    upstream = await aiohttp_server(app)
    url = str(upstream.make_url("")).rstrip("/")
    return await start_gateway(
        f"""
        routes:
          - path: /v1/items/{{id}}
            methods: [GET, PUT]
            conditional: {conditional}
            proxy: {{url: '{url}', path: '/items/{{id}}'}}
        """
    )


async def test_a_strong_etag_is_added_and_stable(start_gateway, aiohttp_server, http) -> None:
    gw = await gateway_for(start_gateway, aiohttp_server, items_app())
    tags = []
    for _ in range(2):
        async with http.get(f"{gw.url}/v1/items/1") as response:
            assert response.status == 200
            tags.append(response.headers["ETag"])
    assert tags[0] == tags[1]
    assert re.fullmatch(r'"[0-9a-f]{32}"', tags[0])


@pytest.mark.parametrize(
    ("if_none_match", "expected"),
    [
        ("{tag}", 304),
        ("W/{tag}", 304),  # weak comparison: W/"x" matches "x"
        ('"other", {tag}', 304),
        ('"other",W/{tag} ', 304),
        ("*", 304),
        ('"other"', 200),
        ("not-a-tag", 200),
    ],
)
async def test_if_none_match(start_gateway, aiohttp_server, http, if_none_match, expected) -> None:
    gw = await gateway_for(start_gateway, aiohttp_server, items_app())
    async with http.get(f"{gw.url}/v1/items/1") as response:
        tag = response.headers["ETag"]
    header = if_none_match.replace("{tag}", tag)
    async with http.get(f"{gw.url}/v1/items/1", headers={"If-None-Match": header}) as response:
        assert response.status == expected
        body = await response.read()
        if expected == 304:
            assert body == b""
            assert response.headers["ETag"] == tag
            assert response.headers["Cache-Control"] == "max-age=60"
            assert response.headers["Vary"] == "Accept"
            assert "Content-Type" not in response.headers
            assert "X-Request-Id" in response.headers


async def test_upstream_validators_are_kept(start_gateway, aiohttp_server, http) -> None:
    gw = await gateway_for(start_gateway, aiohttp_server, items_app(upstream_etag='W/"v1"'))
    async with http.get(f"{gw.url}/v1/items/1") as response:
        assert response.headers["ETag"] == 'W/"v1"'
    async with http.get(f"{gw.url}/v1/items/1", headers={"If-None-Match": '"v1"'}) as response:
        assert response.status == 304


async def test_if_modified_since_only_without_if_none_match(
    start_gateway, aiohttp_server, http
) -> None:
    modified = "Wed, 21 Oct 2026 07:28:00 GMT"
    gw = await gateway_for(start_gateway, aiohttp_server, items_app(last_modified=modified))
    later = "Thu, 22 Oct 2026 07:28:00 GMT"
    earlier = "Tue, 20 Oct 2026 07:28:00 GMT"
    async with http.get(f"{gw.url}/v1/items/1", headers={"If-Modified-Since": later}) as response:
        assert response.status == 304
        assert response.headers["Last-Modified"] == modified
    async with http.get(f"{gw.url}/v1/items/1", headers={"If-Modified-Since": earlier}) as response:
        assert response.status == 200
    async with http.get(
        f"{gw.url}/v1/items/1", headers={"If-Modified-Since": later, "If-None-Match": '"nope"'}
    ) as response:
        assert response.status == 200  # If-None-Match decides when present


async def test_head_and_errors(start_gateway, aiohttp_server, http) -> None:
    gw = await gateway_for(start_gateway, aiohttp_server, items_app())
    async with http.get(f"{gw.url}/v1/items/1") as response:
        tag = response.headers["ETag"]
    async with http.head(f"{gw.url}/v1/items/1", headers={"If-None-Match": "*"}) as response:
        assert response.status == 304
    async with http.get(f"{gw.url}/v1/items/missing") as response:
        assert response.status == 404
        assert "ETag" not in response.headers
    assert tag


async def test_if_match_guards_writes(start_gateway, aiohttp_server, http) -> None:
    app = items_app()
    gw = await gateway_for(start_gateway, aiohttp_server, app, "{require_if_match: true}")
    async with http.put(f"{gw.url}/v1/items/1", json={}) as response:
        assert response.status == 428
        assert response.content_type == "application/problem+json"
    async with http.get(f"{gw.url}/v1/items/1") as response:
        current = response.headers["ETag"]
    async with http.put(f"{gw.url}/v1/items/1", headers={"If-Match": f"W/{current}"}) as response:
        assert response.status == 412  # If-Match compares strongly: a weak tag never matches
    async with http.put(f"{gw.url}/v1/items/1", headers={"If-Match": current}) as response:
        assert response.status == 200  # the first writer wins
    async with http.put(f"{gw.url}/v1/items/1", headers={"If-Match": current}) as response:
        assert response.status == 412  # the second, with the same stale tag, is refused
        assert response.content_type == "application/problem+json"
    async with http.put(f"{gw.url}/v1/items/1", headers={"If-Match": "*"}) as response:
        assert response.status == 200
    async with http.put(f"{gw.url}/v1/items/new", headers={"If-Match": "*"}) as response:
        assert response.status == 412  # nothing there: `*` does not hold
    assert app[WRITES] == [current, "*"]  # the upstream saw If-Match on each write


async def test_fan_out_answers_get_an_etag_but_partial_ones_do_not(
    start_gateway, aiohttp_server, http
) -> None:
    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def slow(request: web.Request) -> web.Response:
        import asyncio

        await asyncio.sleep(1)
        return web.json_response({"late": True})

    app = web.Application()
    app.router.add_get("/fast", fast)
    app.router.add_get("/slow", slow)
    upstream = await aiohttp_server(app)
    url = str(upstream.make_url("")).rstrip("/")
    gw = await start_gateway(
        f"""
        routes:
          - path: /full
            conditional: {{}}
            fanout: {{backends: {{a: {{url: '{url}/fast'}}, b: {{url: '{url}/fast'}}}}}}
          - path: /partial
            conditional: {{}}
            fanout:
              budget: 50ms
              backends: {{a: {{url: '{url}/fast'}}, b: {{url: '{url}/slow'}}}}
        """
    )
    async with http.get(f"{gw.url}/full") as response:
        tag = response.headers["ETag"]
    async with http.get(f"{gw.url}/full", headers={"If-None-Match": tag}) as response:
        assert response.status == 304
    async with http.get(f"{gw.url}/partial", headers={"If-None-Match": "*"}) as response:
        assert response.status == 200
        assert "ETag" not in response.headers
        assert response.headers["Gateway-Partial"] == "b;reason=timeout"
