"""Fan-out over real HTTP: assembly, partial answers, deadlines and cancellation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web

from tests.conftest import free_port

pytestmark = pytest.mark.timeout(30)

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


def part(payload: object, delay: float = 0.0, status: int = 200) -> Behaviour:
    async def handler(request: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(
            status=status, body=orjson.dumps(payload), content_type="application/json"
        )

    return handler


class Backends:
    """A set of backend apps, one per name, each on its own ephemeral port."""

    def __init__(self, aiohttp_server) -> None:
        self._server = aiohttp_server
        self.urls: dict[str, str] = {}
        self.seen: dict[str, list[web.Request]] = {}
        self.cancelled: list[str] = []

    async def add(self, name: str, behaviour: Behaviour) -> None:
        seen = self.seen.setdefault(name, [])

        async def handler(request: web.Request) -> web.StreamResponse:
            seen.append(request)
            try:
                return await behaviour(request)
            except asyncio.CancelledError:
                self.cancelled.append(name)
                raise

        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        server = await self._server(app)  # test servers cancel handlers on disconnect
        self.urls[name] = str(server.make_url("")).rstrip("/")


def fanout_routes(
    backends: dict[str, str], budget: str = "200ms", partial_in_body: bool = True
) -> str:
    lines = [
        "routes:",
        "  - name: dash",
        "    path: /v1/dash/{id}",
        "    fanout:",
        f"      budget: {budget}",
        f"      partial_in_body: {str(partial_in_body).lower()}",
        "      backends:",
    ]
    for name, spec in backends.items():
        lines.append(f"        {name}: {spec}")
    return "\n".join(lines) + "\n"


async def test_all_parts_arrive(aiohttp_server, start_gateway, http) -> None:
    backends = Backends(aiohttp_server)
    await backends.add("user", part({"id": 1}))
    await backends.add("orders", part([1, 2]))
    await backends.add("inventory", part({"sku": "a"}))
    gw = await start_gateway(
        fanout_routes(
            {
                "user": f"{{url: '{backends.urls['user']}/users/{{id}}', required: true}}",
                "orders": f"{{url: '{backends.urls['orders']}/orders?user={{id}}'}}",
                "inventory": f"{{url: '{backends.urls['inventory']}/inv'}}",
            }
        )
    )
    async with http.get(f"{gw.url}/v1/dash/7") as response:
        assert response.status == 200
        body = orjson.loads(await response.read())
        timing = response.headers["Server-Timing"]
        assert "Gateway-Partial" not in response.headers
    assert body == {"user": {"id": 1}, "orders": [1, 2], "inventory": {"sku": "a"}}
    for name in ("user", "orders", "inventory", "gateway", "total"):
        assert f"{name};dur=" in timing
    assert timing.count('desc="ok"') == 3
    assert backends.seen["user"][0].path == "/users/7"
    assert backends.seen["orders"][0].query_string == "user=7"


async def test_optional_timeout_gives_partial_at_the_budget(
    aiohttp_server, start_gateway, http
) -> None:
    backends = Backends(aiohttp_server)
    await backends.add("user", part({"id": 1}))
    await backends.add("slow", part({"never": True}, delay=3.0))
    gw = await start_gateway(
        fanout_routes(
            {
                "user": f"{{url: '{backends.urls['user']}/u', required: true}}",
                "slow": f"{{url: '{backends.urls['slow']}/s', fallback: {{items: []}}}}",
            },
            budget="100ms",
        )
    )
    started = time.monotonic()
    async with http.get(f"{gw.url}/v1/dash/1") as response:
        body = orjson.loads(await response.read())
        elapsed = time.monotonic() - started
        assert response.status == 200
        assert response.headers["Gateway-Partial"] == "slow;reason=timeout"
        assert response.headers["Cache-Control"] == "no-store"
        assert "slow;dur=" in response.headers["Server-Timing"]
        assert 'desc="timeout"' in response.headers["Server-Timing"]
    assert body == {
        "user": {"id": 1},
        "slow": {"items": []},
        "_partial": [{"part": "slow", "reason": "timeout"}],
    }
    # Answered at the budget, not when the slow backend would have answered (3 s).
    assert elapsed < 1.5
    # The late call was cancelled: the slow backend saw its client go away.
    for _ in range(50):
        if backends.cancelled:
            break
        await asyncio.sleep(0.02)
    assert backends.cancelled == ["slow"]


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (part({"x": 1}, status=503), "status"),
        (part({"x": 1}, status=404), "status"),
    ],
)
async def test_optional_failure_reasons(
    aiohttp_server, start_gateway, http, behaviour, reason
) -> None:
    backends = Backends(aiohttp_server)
    await backends.add("user", part({"id": 1}))
    await backends.add("extra", behaviour)
    gw = await start_gateway(
        fanout_routes(
            {
                "user": f"{{url: '{backends.urls['user']}/u'}}",
                "extra": f"{{url: '{backends.urls['extra']}/e'}}",
            },
            partial_in_body=False,
        )
    )
    async with http.get(f"{gw.url}/v1/dash/1") as response:
        assert response.status == 200
        assert response.headers["Gateway-Partial"] == f"extra;reason={reason}"
        body = orjson.loads(await response.read())
    # No fallback configured: the member is null, and no _partial without the option.
    assert body == {"user": {"id": 1}, "extra": None}


async def test_invalid_json_and_refused_connection_are_errors(
    aiohttp_server, start_gateway, http
) -> None:
    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="{not json", content_type="application/json")

    backends = Backends(aiohttp_server)
    await backends.add("user", part({"id": 1}))
    await backends.add("broken", not_json)
    gw = await start_gateway(
        fanout_routes(
            {
                "user": f"{{url: '{backends.urls['user']}/u'}}",
                "broken": f"{{url: '{backends.urls['broken']}/b'}}",
                "gone": f"{{url: 'http://127.0.0.1:{free_port()}/g'}}",
            }
        )
    )
    async with http.get(f"{gw.url}/v1/dash/1") as response:
        assert response.status == 200
        assert response.headers["Gateway-Partial"] == "broken;reason=error, gone;reason=error"


async def test_required_timeout_is_504_naming_the_part(aiohttp_server, start_gateway, http) -> None:
    backends = Backends(aiohttp_server)
    await backends.add("user", part({"id": 1}, delay=2.0))
    await backends.add("orders", part([]))
    gw = await start_gateway(
        fanout_routes(
            {
                "user": f"{{url: '{backends.urls['user']}/u', required: true, timeout: 50ms}}",
                "orders": f"{{url: '{backends.urls['orders']}/o'}}",
            }
        )
    )
    async with http.get(f"{gw.url}/v1/dash/1") as response:
        assert response.status == 504
        assert response.content_type == "application/problem+json"
        problem = orjson.loads(await response.read())
        assert "Server-Timing" in response.headers
    assert problem["part"] == "user"
    assert problem["reason"] == "timeout"
    assert "user" in problem["detail"]


async def test_required_failure_answers_without_waiting_for_the_rest(
    aiohttp_server, start_gateway, http
) -> None:
    backends = Backends(aiohttp_server)
    await backends.add("user", part({"id": 1}, status=500))
    await backends.add("slow", part({}, delay=2.0))
    gw = await start_gateway(
        fanout_routes(
            {
                "user": f"{{url: '{backends.urls['user']}/u', required: true}}",
                "slow": f"{{url: '{backends.urls['slow']}/s'}}",
            },
            budget="3s",
        )
    )
    started = time.monotonic()
    async with http.get(f"{gw.url}/v1/dash/1") as response:
        assert response.status == 502
        problem = orjson.loads(await response.read())
    assert time.monotonic() - started < 1.5
    assert problem["part"] == "user"
    assert problem["reason"] == "status"


async def test_budget_travels_to_backends_and_client_can_only_shorten_it(
    aiohttp_server, start_gateway, http
) -> None:
    backends = Backends(aiohttp_server)
    await backends.add("a", part({}))
    await backends.add("slow", part({}, delay=0.5))
    gw = await start_gateway(
        fanout_routes(
            {
                "a": f"{{url: '{backends.urls['a']}/a', timeout: 150ms}}",
                "slow": f"{{url: '{backends.urls['slow']}/s'}}",
            },
            budget="1s",
        )
    )
    async with http.get(f"{gw.url}/v1/dash/1") as response:
        assert response.status == 200
    sent = int(backends.seen["a"][0].headers["Gateway-Budget-Ms"])
    assert 0 < sent <= 150

    started = time.monotonic()
    async with http.get(f"{gw.url}/v1/dash/1", headers={"Gateway-Budget-Ms": "80"}) as response:
        assert response.headers["Gateway-Partial"] == "slow;reason=timeout"
    assert time.monotonic() - started < 0.45
    assert int(backends.seen["slow"][-1].headers["Gateway-Budget-Ms"]) <= 80

    async with http.get(f"{gw.url}/v1/dash/1", headers={"Gateway-Budget-Ms": "999999"}) as response:
        assert response.status == 200
    assert int(backends.seen["a"][-1].headers["Gateway-Budget-Ms"]) <= 150


async def test_route_parameters_cannot_inject_into_backend_urls(
    aiohttp_server, start_gateway, http
) -> None:
    backends = Backends(aiohttp_server)
    await backends.add("orders", part([]))
    gw = await start_gateway(
        fanout_routes({"orders": f"{{url: '{backends.urls['orders']}/orders?user={{id}}'}}"})
    )
    async with http.get(f"{gw.url}/v1/dash/1%26admin=true") as response:
        assert response.status == 200
    request = backends.seen["orders"][0]
    assert dict(request.query) == {"user": "1&admin=true"}


async def test_client_disconnect_cancels_backend_calls(aiohttp_server, start_gateway) -> None:
    backends = Backends(aiohttp_server)
    await backends.add("slow", part({}, delay=3.0))
    gw = await start_gateway(
        fanout_routes({"slow": f"{{url: '{backends.urls['slow']}/s'}}"}, budget="5s")
    )
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /v1/dash/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    for _ in range(100):
        if backends.seen.get("slow"):
            break
        await asyncio.sleep(0.01)
    writer.transport.abort()
    for _ in range(100):
        if backends.cancelled and gw.gateway.runtime.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert backends.cancelled == ["slow"]
    assert gw.gateway.runtime.in_flight == 0


async def test_backend_closing_mid_body_is_an_error(
    aiohttp_server, start_gateway, http, raw_upstream
) -> None:
    from tests.conftest import read_request_head

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"partial":')
        await writer.drain()

    backends = Backends(aiohttp_server)
    await backends.add("user", part({"id": 1}))
    port = await raw_upstream(cut)
    gw = await start_gateway(
        fanout_routes(
            {
                "user": f"{{url: '{backends.urls['user']}/u'}}",
                "cut": f"{{url: 'http://127.0.0.1:{port}/c'}}",
            }
        )
    )
    async with http.get(f"{gw.url}/v1/dash/1") as response:
        assert response.status == 200
        assert response.headers["Gateway-Partial"] == "cut;reason=error"
