"""The admin API over real HTTP: token, probes, introspection, reload, bad input."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest
from aiohttp import web

from gateway.admin.app import admin_app
from gateway.admin.openapi import DOCUMENT
from tests.conftest import RunningGateway, raw_request
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

TOKEN_ENV = "GATEWAY_TEST_ADMIN_TOKEN_NEVER_SET"
SECRET = "hunter2"


def ok_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
async def upstream_url(aiohttp_server) -> str:
    server = await aiohttp_server(ok_app())
    return str(server.make_url("")).rstrip("/")


def admin_top(tmp_path: Path, extra: str = "", store: dict[str, str] | None = None) -> str:
    """auth (sqlite in tmp_path unless ``store`` says otherwise) and an admin listener on
    an ephemeral port."""
    auth = store or {"sqlite_path": str(tmp_path / "credentials.db")}
    auth["pepper_file"] = str(tmp_path / "pepper.json")
    admin = {
        "enabled": "true",
        "listen": "{host: 127.0.0.1, port: 0}",
        "token_env": TOKEN_ENV,
        "token_file": str(tmp_path / "admin-token"),
    }
    lines = ["auth:", *(f"  {k}: {v}" for k, v in auth.items())]
    lines += ["admin:", *(f"  {k}: {v}" for k, v in admin.items())]
    return "\n".join(lines) + "\n" + textwrap.dedent(extra)


class Admin:
    def __init__(self, gw: RunningGateway, http: aiohttp.ClientSession, token: str) -> None:
        self.gw = gw
        self.http = http
        self.url = f"http://127.0.0.1:{gw.gateway.admin_port}"
        self.auth = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, *, token: bool = True, **kwargs: Any
    ) -> tuple[int, dict[str, str], Any]:
        headers = {**(self.auth if token else {}), **kwargs.pop("headers", {})}
        async with self.http.request(
            method, self.url + path, headers=headers, **kwargs
        ) as response:
            raw = await response.read()
            return response.status, dict(response.headers), orjson.loads(raw) if raw else None


async def start_admin(
    start_gateway, http, tmp_path, routes: str, extra: str = "", store: dict[str, str] | None = None
) -> Admin:
    gw = await start_gateway(routes, top=admin_top(tmp_path, extra, store))
    token = (tmp_path / "admin-token").read_text().strip()
    return Admin(gw, http, token)


def assert_problem(headers: dict[str, str], body: Any, status: int) -> None:
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == status
    assert body["type"].startswith("urn:gateway:problem:admin-")
    assert body["title"]
    assert body["detail"]


def one_route(url: str) -> str:
    """Routes: ``/a``, proxied to ``url``."""
    return f"routes:\n  - path: /a\n    proxy: {{url: '{url}'}}\n"


def concrete(path: str) -> str:
    return path.replace("{key_id}", "k0").replace("{client_id}", "c0")


async def test_the_document_describes_exactly_the_operations_the_app_registers(
    start_gateway, http, tmp_path, upstream_url
) -> None:
    admin = await start_admin(
        start_gateway,
        http,
        tmp_path,
        one_route(upstream_url),
    )

    async def metrics(request: web.Request) -> web.Response:
        return web.Response()

    app = admin_app(admin.gw.gateway, "token", metrics=metrics)
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    documented = {
        (method, path) for path, operations in DOCUMENT["paths"].items() for method in operations
    }
    assert registered == documented
    assert len(registered) == 19


async def test_every_operation_needs_the_token_but_the_probes(
    start_gateway, http, tmp_path, upstream_url
) -> None:
    admin = await start_admin(
        start_gateway,
        http,
        tmp_path,
        one_route(upstream_url),
    )
    assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600
    operations = [
        (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
    ]
    assert len(operations) == 19
    for method, path in operations:
        if path == "/":
            continue  # the dashboard page is HTML: below
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "wrong"}):
            status, answer_headers, body = await admin.call(
                method, concrete(path), token=False, headers=headers
            )
            if path in ("/healthz", "/readyz"):
                assert status == 200, (method, path)
                continue
            assert status == 401, (method, path, headers)
            assert_problem(answer_headers, body, 401)
            assert answer_headers["WWW-Authenticate"] == 'Bearer realm="gateway-admin"'
    # The dashboard page holds no data: no token needed (its script asks /admin/stats).
    async with http.get(admin.url + "/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
    # The scheme is case-insensitive; the token itself must follow it.
    token = admin.auth["Authorization"].removeprefix("Bearer ")
    for scheme, expected in (("bearer", 200), ("BEARER", 200), ("Basic", 401), ("", 401)):
        value = f"{scheme} {token}" if scheme else token
        status, _, _ = await admin.call(
            "GET", "/admin/routes", token=False, headers={"Authorization": value}
        )
        assert status == expected, value
    # Unknown paths too: without the token nothing about the API is learnt.
    status, _, _ = await admin.call("GET", "/admin/nothing", token=False)
    assert status == 401
    status, headers, body = await admin.call("GET", "/admin/nothing")
    assert status == 404
    assert_problem(headers, body, 404)
    status, headers, body = await admin.call("PUT", "/admin/routes")
    assert status == 405
    assert_problem(headers, body, 405)
    assert headers["Allow"] == "GET"
    status, headers, body = await admin.call("POST", "/healthz", token=False)
    assert status == 405
    assert_problem(headers, body, 405)
    status, _, body = await admin.call("GET", "/openapi.json")
    assert status == 200
    assert body == DOCUMENT


async def test_routes_show_the_compiled_chain_in_order(
    start_gateway, http, tmp_path, upstream_url
) -> None:
    origin = upstream_url.replace("http://", f"http://ops:{SECRET}@")
    routes = f"""
    upstreams:
      orders:
        targets: ['{origin}']
    routes:
      - name: orders
        path: /v1/orders/{{id}}
        methods: [GET, POST]
        auth: [api_key]
        scopes: {{any_of: [orders:read]}}
        validation: {{query: {{type: object}}}}
        idempotency: {{required: true}}
        rate_limit: {{on_store_down: fail_closed, cost: 2}}
        conditional: {{require_if_match: true}}
        cache: {{ttl: 5s}}
        api: shop
        version: v1
        proxy: {{upstream: orders, path: '/orders/{{id}}', timeout: 2s}}
      - name: replays-counted
        path: /v1/pay
        methods: [POST]
        idempotency: {{replays_count_against_rate_limit: true}}
        rate_limit: {{by: ip}}
        proxy: {{url: '{upstream_url}'}}
      - name: dash
        path: /v1/dash/{{id}}
        fanout:
          budget: 80ms
          backends:
            user: {{url: '{upstream_url}/users/{{id}}?token=abc', required: true}}
            orders: {{url: '{upstream_url}/orders?user={{id}}', timeout: 40ms, fallback: []}}
    """
    extra = """
    rate_limits:
      plans: {free: {rate: 10/s}}
    apis:
      shop:
        strategy: uri
        versions: {v1: {deprecated: 2024-01-01}}
    """
    admin = await start_admin(start_gateway, http, tmp_path, routes, extra)
    status, _, body = await admin.call("GET", "/admin/routes")
    assert status == 200
    text = orjson.dumps(body).decode()
    assert SECRET not in text
    assert "abc" not in text
    by_name = {route["name"]: route for route in body["routes"]}
    orders = by_name["orders"]
    assert orders["methods"] == ["GET", "POST"]
    assert orders["budget"] == 2.0
    assert (orders["api"], orders["version"]) == ("shop", "v1")
    chain = [policy["policy"] for policy in orders["policies"]]
    assert chain == [
        "version",
        "auth",
        "validation",
        "idempotency",
        "rate_limit",
        "conditional",
        "cache",
    ]
    settings = {policy["policy"]: policy["settings"] for policy in orders["policies"]}
    assert settings["version"]["deprecated"] == "2024-01-01"
    assert settings["auth"]["methods"] == ["api_key"]
    assert settings["auth"]["scopes"] == {"any_of": ["orders:read"]}
    assert settings["rate_limit"]["on_store_down"] == "fail_closed"
    assert settings["rate_limit"]["cost"] == 2
    assert settings["rate_limit"]["store"] == "memory"
    assert settings["cache"]["ttl"] == 5.0
    assert settings["conditional"]["require_if_match"] is True
    assert settings["idempotency"]["required"] is True
    assert orders["upstream"]["kind"] == "proxy"
    assert orders["upstream"]["upstream"] == "orders"
    assert orders["upstream"]["targets"] == [upstream_url.replace("http://", "http://ops:***@")]
    assert orders["upstream"]["path"] == "/orders/{id}"
    # The route asked for replays to count: the chain shows the rate limit first.
    replays = [policy["policy"] for policy in by_name["replays-counted"]["policies"]]
    assert replays == ["rate_limit", "idempotency"]
    dash = by_name["dash"]
    assert dash["kind"] == "fanout"
    assert dash["policies"] == []
    assert dash["budget"] == 0.08
    backends = {backend["name"]: backend for backend in dash["upstream"]["backends"]}
    assert backends["user"]["required"] is True
    assert backends["user"]["url"].endswith("/users/{id}?token=***")
    assert backends["orders"] == {
        "name": "orders",
        "url": f"{upstream_url}/orders?user={{id}}",
        "method": "GET",
        "timeout": 0.04,
        "required": False,
        "fallback": True,
    }


async def test_config_is_shown_with_credentials_masked(start_gateway, http, tmp_path) -> None:
    routes = one_route("http://127.0.0.1:9")
    extra = f"""
    rate_limits:
      redis_url: redis://:{SECRET}@127.0.0.1:1/0
      plans: {{free: {{rate: 10/s}}}}
    """
    admin = await start_admin(start_gateway, http, tmp_path, routes, extra)
    status, _, body = await admin.call("GET", "/admin/config")
    assert status == 200
    assert SECRET not in orjson.dumps(body).decode()
    assert body["config"]["rate_limits"]["redis_url"] == "redis://:***@127.0.0.1:1/0"
    assert body["config"]["rate_limits"]["plans"]["free"]["rate"] == [10.0, 1.0]
    assert body["config"]["admin"]["token_env"] == TOKEN_ENV
    assert body["config"]["routes"][0]["path"] == "/a"
    assert [Path(file).name for file in body["files"]] == ["gateway.yaml", "routes.yaml"]


async def test_consumers_come_from_the_config_and_the_store(start_gateway, http, tmp_path) -> None:
    routes = one_route("http://127.0.0.1:9")
    extra = """
    rate_limits:
      plans:
        free: {rate: 1/s}
        pro: {rate: 100/s, quota: 10000/day}
      consumers:
        acme: {plan: pro, burst: 500}
        gamma: {rate: 5/s}
    """
    admin = await start_admin(start_gateway, http, tmp_path, routes, extra)
    status, _, created = await admin.call(
        "POST", "/admin/keys", json={"consumer": "acme", "plan": "free"}
    )
    assert status == 201
    await admin.call("POST", "/admin/keys", json={"consumer": "acme"})
    status, _, _ = await admin.call("DELETE", f"/admin/keys/{created['key_id']}")
    assert status == 204
    status, _, _ = await admin.call("POST", "/admin/clients", json={"consumer": "beta"})
    assert status == 201
    status, _, body = await admin.call("GET", "/admin/consumers")
    assert status == 200
    assert body["default_plan"] == "free"
    assert body["plans"]["pro"] == {"rate": [100.0, 1.0], "quota": [10000.0, 86400.0]}
    assert body["credential_store"] is True
    consumers = {entry["id"]: entry for entry in body["consumers"]}
    assert list(consumers) == ["acme", "beta", "gamma"]
    acme = consumers["acme"]
    assert acme["sources"] == ["config", "store"]
    assert acme["plan"] == "free"  # the store's plan...
    assert acme["effective_plan"] == "pro"  # ...overridden by the contract's
    assert acme["contract"] == {"plan": "pro", "burst": 500}
    assert acme["keys"] == {"live": 1, "total": 2}
    assert acme["clients"] == {"live": 0, "total": 0}
    assert consumers["beta"]["sources"] == ["store"]
    assert consumers["beta"]["effective_plan"] == "free"
    assert consumers["beta"]["clients"] == {"live": 1, "total": 1}
    gamma = consumers["gamma"]
    assert gamma["sources"] == ["config"]
    assert (gamma["plan"], gamma["created_at"], gamma["effective_plan"]) == (None, None, "free")


async def test_reload_refused_then_accepted(start_gateway, http, tmp_path, upstream_url) -> None:
    good = f"routes:\n  - name: a\n    path: /a\n    proxy: {{url: '{upstream_url}'}}\n"
    admin = await start_admin(start_gateway, http, tmp_path, good)
    status, _, before = await admin.call("GET", "/admin/reload")
    assert status == 200
    assert before["reloads_ok"] == before["reloads_failed"] == 0
    assert before["last_reload_at"] is None
    assert before["last_error"] is None

    admin.gw.write_routes(good.replace("path: /a", "path: /b\n    methods: [BREW]"))
    status, headers, body = await admin.call("POST", "/admin/reload")
    assert status == 422
    assert_problem(headers, body, 422)
    assert body["reloaded"] is False
    assert "routes.yaml:" in body["detail"]
    assert "BREW" in body["detail"]
    async with http.get(admin.gw.url + "/a") as response:
        assert response.status == 200  # the old config serves on
    status, _, after = await admin.call("GET", "/admin/reload")
    assert after["reloads_failed"] == 1
    assert after["reloads_ok"] == 0
    assert after["last_error"] == body["detail"]
    assert isinstance(after["last_reload_at"], float)

    admin.gw.write_routes(
        good + f"  - name: b\n    path: /b\n    proxy: {{url: '{upstream_url}'}}\n"
    )
    status, _, body = await admin.call("POST", "/admin/reload")
    assert status == 200
    assert body == {"reloaded": True, "routes": 2}
    async with http.get(admin.gw.url + "/b") as response:
        assert response.status == 200
    status, _, after = await admin.call("GET", "/admin/reload")
    assert (after["reloads_ok"], after["reloads_failed"], after["last_error"]) == (1, 1, None)
    status, _, routes = await admin.call("GET", "/admin/routes")
    assert [route["name"] for route in routes["routes"]] == ["a", "b"]


async def test_readyz_follows_the_required_stores(
    start_gateway, http, tmp_path, upstream_url, private_redis_server: RedisServer
) -> None:
    redis = private_redis_server.url
    routes = f"""
    routes:
      - path: /a
        auth: [api_key]
        rate_limit: {{on_store_down: fail_closed}}
        proxy: {{url: '{upstream_url}'}}
    """
    extra = f"""
    rate_limits:
      store: redis
      redis_url: {redis}
      plans: {{free: {{rate: 10/s}}}}
    idempotency:
      store: redis
      redis_url: {redis}
    cache:
      redis_url: {redis}
    """
    admin = await start_admin(start_gateway, http, tmp_path, routes, extra)
    readyz = f"{admin.url}/readyz"
    status, _, body = await admin.call("GET", "/readyz", token=False)
    assert status == 200
    assert body == {
        "ready": True,
        "checks": {
            "credential_store": {"ok": True, "required": True},
            "rate_limit_store": {"ok": True, "required": True},
            "idempotency_store": {"ok": True, "required": False},  # no route takes keys
            "cache_bus": {"ok": True, "required": False},  # best effort by design
        },
    }

    await private_redis_server.astop()
    assert await poll_status(http, readyz, 503) == 503
    status, headers, body = await admin.call("GET", "/readyz", token=False)
    assert_problem(headers, body, 503)
    assert headers["Retry-After"] == "1"
    assert body["detail"] == "required stores are down: rate_limit_store"
    assert body["checks"]["rate_limit_store"] == {"ok": False, "required": True}
    assert body["checks"]["cache_bus"] == {"ok": False, "required": False}
    assert body["checks"]["credential_store"] == {"ok": True, "required": True}  # sqlite
    status, _, _ = await admin.call("GET", "/healthz", token=False)
    assert status == 200  # alive all the same

    # What is required follows the routes: fail_open can serve without the store.
    admin.gw.write_routes(routes.replace("fail_closed", "fail_open"))
    status, _, _ = await admin.call("POST", "/admin/reload")
    assert status == 200
    assert await poll_status(http, readyz, 200) == 200
    admin.gw.write_routes(routes)
    status, _, _ = await admin.call("POST", "/admin/reload")
    assert status == 200
    assert await poll_status(http, readyz, 503) == 503

    await private_redis_server.astart()
    assert await poll_status(http, readyz, 200) == 200


async def test_a_credential_store_down_is_503_and_not_ready(
    start_gateway, http, tmp_path, upstream_url, private_redis_server: RedisServer
) -> None:
    routes = f"routes:\n  - path: /a\n    auth: [api_key]\n    proxy: {{url: '{upstream_url}'}}\n"
    store = {"store": "redis", "redis_url": private_redis_server.url}
    admin = await start_admin(start_gateway, http, tmp_path, routes, store=store)
    status, _, _ = await admin.call("POST", "/admin/keys", json={"consumer": "acme"})
    assert status == 201
    await private_redis_server.astop()
    status, headers, body = await admin.call("GET", "/admin/keys")
    assert status == 503
    assert_problem(headers, body, 503)
    status, headers, body = await admin.call("GET", "/admin/consumers")
    assert status == 503
    assert await poll_status(http, f"{admin.url}/readyz", 503) == 503
    status, _, body = await admin.call("GET", "/readyz", token=False)
    assert body["detail"] == "required stores are down: credential_store"
    await private_redis_server.astart()
    assert await poll_status(http, f"{admin.url}/readyz", 200) == 200


async def poll_status(http: aiohttp.ClientSession, url: str, wanted: int) -> int:
    """Readiness results are reused for a second and Redis clients reconnect: poll."""
    status = -1
    for _ in range(100):
        async with http.get(url) as response:
            status = response.status
        if status == wanted:
            break
        await asyncio.sleep(0.1)
    return status


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "field"),
    [
        ("POST", "/admin/keys", b"{not json", 400, None),
        ("POST", "/admin/keys", b"\xff\xfe", 400, None),
        ("POST", "/admin/keys", b"[1, 2]", 422, "body"),
        ("POST", "/admin/keys", b"{}", 422, "consumer"),
        ("POST", "/admin/keys", b'{"consumer": "a b"}', 422, "consumer"),
        ("POST", "/admin/keys", b'{"consumer": "a", "scope": ["x"]}', 422, "scope"),
        ("POST", "/admin/keys", b'{"consumer": "a", "scopes": "x"}', 422, "scopes"),
        ("POST", "/admin/keys", b'{"consumer": "a", "scopes": [""]}', 422, "scopes"),
        ("POST", "/admin/keys", b'{"consumer": "a", "plan": 3}', 422, "plan"),
        ("POST", "/admin/keys", b'{"consumer": "a", "expires_in": "soon"}', 422, "expires_in"),
        ("POST", "/admin/keys", b'{"consumer": "a", "expires_in": " 5s"}', 422, "expires_in"),
        ("POST", "/admin/keys", b'{"consumer": "a", "expires_in": -1}', 422, "expires_in"),
        ("POST", "/admin/keys", b'{"consumer": "a", "expires_in": true}', 422, "expires_in"),
        ("POST", "/admin/keys", b'{"consumer": "a", "expires_in": 1e300}', 422, "expires_in"),
        ("POST", "/admin/keys", b'{"consumer": "a"}' + b" " * 70_000, 413, None),
        ("POST", "/admin/clients", b'{"consumer": "a", "expires_in": "1d"}', 422, "expires_in"),
        ("POST", "/admin/keys/nope/rotate", b"", 404, None),
        ("POST", "/admin/keys/nope/rotate", b'{"overlap": "x"}', 422, "overlap"),
        ("DELETE", "/admin/keys/nope", b"", 404, None),
        ("DELETE", "/admin/clients/nope", b"", 404, None),
        ("DELETE", "/admin/cache", b"", 422, "query"),
        ("DELETE", "/admin/cache?path=/a&prefix=/a", b"", 422, "query"),
        ("DELETE", "/admin/cache?path=a", b"", 422, "path"),
        ("DELETE", "/admin/cache?prefix=", b"", 422, "prefix"),
        ("DELETE", "/admin/cache?path=/a&everything=true", b"", 422, "query"),
    ],
)
async def test_bad_input_is_a_problem(
    start_gateway, http, tmp_path, method, path, data, status, field
) -> None:
    routes = one_route("http://127.0.0.1:9")
    admin = await start_admin(start_gateway, http, tmp_path, routes)
    got, headers, body = await admin.call(
        method, path, data=data, headers={"Content-Type": "application/json"}
    )
    assert got == status, body
    assert_problem(headers, body, status)
    assert body.get("field") == field


async def test_created_credentials_and_purges(start_gateway, http, tmp_path) -> None:
    routes = one_route("http://127.0.0.1:9")
    admin = await start_admin(start_gateway, http, tmp_path, routes)
    status, _, key = await admin.call(
        "POST",
        "/admin/keys",
        json={"consumer": "acme", "scopes": ["b", "a"], "expires_in": 3600, "plan": None},
    )
    assert status == 201
    assert key["key"].startswith(f"gwk_{key['key_id']}_")
    assert key["scopes"] == ["a", "b"]
    assert key["expires_at"] == pytest.approx(key["created_at"] + 3600)
    status, _, rotated = await admin.call(
        "POST", f"/admin/keys/{key['key_id']}/rotate", json={"overlap": "1h"}
    )
    assert status == 201
    assert rotated["rotated_from"] == key["key_id"]
    status, _, listing = await admin.call("GET", "/admin/keys", params={"consumer": "acme"})
    assert {entry["key_id"] for entry in listing["keys"]} == {key["key_id"], rotated["key_id"]}
    assert all("key" not in entry and "secret_hash" not in entry for entry in listing["keys"])
    status, _, listing = await admin.call("GET", "/admin/keys", params={"consumer": "other"})
    assert listing == {"keys": []}
    status, _, purged = await admin.call("DELETE", "/admin/cache", params={"prefix": "/"})
    assert (status, purged) == (200, {"purged": 0})


async def test_readyz_is_503_while_the_gateway_drains_its_in_flight_requests(
    start_gateway, http, tmp_path, aiohttp_server
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({"done": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = await aiohttp_server(app)
    origin = str(upstream.make_url("")).rstrip("/")
    routes = f"routes:\n  - path: /slow\n    proxy: {{url: '{origin}', timeout: 10s}}\n"
    # Long enough that the request in flight is let finish, not cancelled.
    gw = await start_gateway(routes, server="shutdown_timeout: 10s", top=admin_top(tmp_path))
    admin = Admin(gw, http, (tmp_path / "admin-token").read_text().strip())
    status, _, body = await admin.call("GET", "/readyz", token=False)
    assert (status, body["ready"]) == (200, True)

    in_flight = asyncio.ensure_future(http.get(f"{admin.gw.url}/slow"))
    await asyncio.wait_for(arrived.wait(), 5)
    stopping = asyncio.ensure_future(admin.gw.gateway.stop())
    assert await poll_status(http, f"{admin.url}/readyz", 503) == 503
    status, headers, body = await admin.call("GET", "/readyz", token=False)
    assert headers["Content-Type"] == "application/problem+json"
    assert (status, headers["Retry-After"]) == (503, "1")
    assert (body["ready"], body["draining"]) == (False, True)
    jsonschema.validate(
        body,
        {"$ref": "#/components/schemas/NotReady", "components": DOCUMENT["components"]},
        cls=jsonschema.Draft202012Validator,
    )
    # No reload while shutting down: it would build pools the shutdown has closed.
    status, _, body = await admin.call("POST", "/admin/reload")
    assert (status, body["reloaded"]) == (503, False)
    # A second stop waits for the one shutdown rather than returning at once.
    again = asyncio.ensure_future(admin.gw.gateway.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()
    assert not again.done()

    release.set()
    response = await asyncio.wait_for(in_flight, 5)
    assert response.status == 200  # the request in flight was finished, not cut
    assert await response.json() == {"done": True}
    response.release()
    await asyncio.wait_for(asyncio.gather(stopping, again), 5)


async def test_with_a_drain_delay_the_gateway_serves_on_while_not_ready(
    start_gateway, http, tmp_path, upstream_url
) -> None:
    routes = one_route(upstream_url)
    gw = await start_gateway(routes, server="drain_delay: 1s", top=admin_top(tmp_path))
    admin = Admin(gw, http, (tmp_path / "admin-token").read_text().strip())
    stopping = asyncio.ensure_future(gw.gateway.stop())
    assert await poll_status(http, f"{admin.url}/readyz", 503) == 503
    # Not ready, and still answering: a new connection is accepted and served.
    async with aiohttp.ClientSession() as fresh, fresh.get(f"{gw.url}/a") as response:
        assert response.status == 200
    assert not stopping.done()
    await asyncio.wait_for(stopping, 5)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as fresh, fresh.get(f"{gw.url}/a"):
            pass


@pytest.mark.parametrize(
    "request_bytes",
    [
        # Both framings at once (RFC 9112 6.3): the request cannot be parsed safely.
        b"POST /admin/clients HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\nabc",
        b"NOT A REQUEST\r\n\r\n",
    ],
)
async def test_an_unparseable_admin_request_is_a_problem_too(
    start_gateway, http, tmp_path, upstream_url, request_bytes: bytes
) -> None:
    admin = await start_admin(
        start_gateway,
        http,
        tmp_path,
        one_route(upstream_url),
    )
    port = admin.gw.gateway.admin_port
    assert port is not None
    response = await raw_request(port, request_bytes)
    assert response.status == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert orjson.loads(response.body)["status"] == 400
