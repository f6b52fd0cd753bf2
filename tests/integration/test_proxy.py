"""The proxy terminal over real HTTP: headers, bodies, errors and target health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import free_port, raw_request, read_request_head

pytestmark = pytest.mark.timeout(30)


def echo_app() -> web.Application:
    """An upstream that answers with what it received."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_length": len(body),
                "body_head": body[:32].decode("latin-1"),
            },
            headers={"X-Upstream": "echo"},
        )

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def routes_for(url: str, path: str | None = "/echo/{id}", timeout: str = "2s") -> str:
    lines = [
        "routes:",
        "  - name: echo",
        "    path: /v1/echo/{id}",
        "    methods: [GET, POST, PUT, DELETE]",
        "    proxy:",
        f"      url: {url}",
        f"      timeout: {timeout}",
    ]
    if path is not None:
        lines.append(f"      path: {path}")
    return "\n".join(lines) + "\n"


def header_values(payload: dict[str, object], name: str) -> list[str]:
    pairs = payload["headers"]
    assert isinstance(pairs, list)
    return [v for k, v in pairs if k.lower() == name.lower()]


async def test_proxies_path_rewrite_and_query(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(routes_for(str(upstream.make_url(""))))
    async with http.get(f"{gw.url}/v1/echo/42?a=1&b=two%20words") as response:
        assert response.status == 200
        payload = orjson.loads(await response.read())
        assert response.headers["X-Upstream"] == "echo"
    assert payload["method"] == "GET"
    assert payload["path_qs"] == "/echo/42?a=1&b=two%20words"


async def test_same_path_when_no_rewrite(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(routes_for(str(upstream.make_url("")), path=None))
    async with http.get(f"{gw.url}/v1/echo/7") as response:
        payload = orjson.loads(await response.read())
    assert payload["path_qs"] == "/v1/echo/7"


async def test_hop_by_hop_and_identity_headers_never_cross(aiohttp_server, start_gateway) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(routes_for(str(upstream.make_url(""))))
    response = await raw_request(
        gw.port,
        b"GET /v1/echo/1 HTTP/1.1\r\nHost: api.example\r\n"
        b"Connection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nProxy-Authorization: Basic Zm9v\r\nUpgrade: websocket\r\n"
        b"X-Consumer-Id: forged\r\nX-Consumer-Plan: enterprise\r\nX-Custom: kept\r\n\r\n",
    )
    assert response.status == 200
    payload = orjson.loads(response.body)
    for name in (
        "X-Secret-Hop",
        "Keep-Alive",
        "TE",
        "Proxy-Authorization",
        "Upgrade",
        "X-Consumer-Id",
        "X-Consumer-Plan",
    ):
        assert header_values(payload, name) == [], name
    assert header_values(payload, "X-Custom") == ["kept"]


async def test_upstream_hop_by_hop_headers_are_removed(start_gateway, raw_upstream, http) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Private\r\n"
            b"X-Private: secret\r\nKeep-Alive: timeout=5\r\nX-Public: yes\r\n\r\nok"
        )
        await writer.drain()

    port = await raw_upstream(upstream)
    gw = await start_gateway(routes_for(f"http://127.0.0.1:{port}"))
    async with http.get(f"{gw.url}/v1/echo/1") as response:
        assert await response.read() == b"ok"
        assert "X-Private" not in response.headers
        assert "Keep-Alive" not in response.headers
        assert response.headers["X-Public"] == "yes"
        assert response.headers["Via"] == "1.1 gateway"


async def test_forwarding_headers_describe_the_client(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(
        routes_for(str(upstream.make_url(""))), server="forwarded_headers: both"
    )
    async with http.get(
        f"{gw.url}/v1/echo/1",
        headers={"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "Via": "1.0 edge"},
    ) as response:
        payload = orjson.loads(await response.read())
    assert header_values(payload, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(payload, "Forwarded")[0].startswith("for=127.0.0.1;proto=http")
    assert header_values(payload, "X-Forwarded-Proto") == ["http"]
    assert header_values(payload, "Via") == ["1.0 edge, 1.1 gateway"]
    assert header_values(payload, "X-Request-Id") != []
    assert int(header_values(payload, "Gateway-Budget-Ms")[0]) <= 2000


async def test_trusted_forwarding_headers_are_extended(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(routes_for(str(upstream.make_url(""))), server="trust_forwarded: true")
    async with http.get(f"{gw.url}/v1/echo/1", headers={"X-Forwarded-For": "6.6.6.6"}) as response:
        payload = orjson.loads(await response.read())
    assert header_values(payload, "X-Forwarded-For") == ["6.6.6.6, 127.0.0.1"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("target", None), ("client", "api.example"), ("internal.users", "internal.users")],
)
async def test_host_header_as_configured(
    aiohttp_server, start_gateway, http, mode: str, expected: str | None
) -> None:
    upstream = await aiohttp_server(echo_app())
    origin = str(upstream.make_url("")).rstrip("/")
    gw = await start_gateway(
        f"""
        upstreams:
          echo:
            targets: [{origin}]
            host_header: {mode}
        routes:
          - path: /v1/echo/{{id}}
            proxy: {{upstream: echo}}
        """
    )
    async with http.get(f"{gw.url}/v1/echo/1", headers={"Host": "api.example"}) as response:
        payload = orjson.loads(await response.read())
    want = expected or origin.removeprefix("http://")
    assert header_values(payload, "Host") == [want]


async def test_request_bodies_stream_both_ways(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(
        routes_for(str(upstream.make_url(""))), server="limits: {max_body_size: 4MiB}"
    )
    body = bytes(range(256)) * 4096  # 1 MiB
    async with http.post(f"{gw.url}/v1/echo/1", data=body) as response:
        payload = orjson.loads(await response.read())
    assert payload["body_length"] == len(body)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(16):
            yield b"x" * 65536

    async with http.post(f"{gw.url}/v1/echo/1", data=chunks()) as response:
        payload = orjson.loads(await response.read())
    assert payload["body_length"] == 16 * 65536


async def test_large_response_is_streamed_intact(aiohttp_server, start_gateway, http) -> None:
    blob = bytes(range(256)) * 8192  # 2 MiB, over the buffering limit

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)  # chunked: no Content-Length
        for start in range(0, len(blob), 100_000):
            await response.write(blob[start : start + 100_000])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/echo/{id}", big)
    upstream = await aiohttp_server(app)
    gw = await start_gateway(routes_for(str(upstream.make_url(""))))
    async with http.get(f"{gw.url}/v1/echo/1") as response:
        assert response.status == 200
        assert await response.read() == blob


async def test_body_over_limit_is_refused(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(
        routes_for(str(upstream.make_url(""))), server="limits: {max_body_size: 1KiB}"
    )
    async with http.post(f"{gw.url}/v1/echo/1", data=b"x" * 2048) as response:
        assert response.status == 413
        assert response.content_type == "application/problem+json"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    async with http.post(f"{gw.url}/v1/echo/1", data=chunks()) as response:
        assert response.status == 413


async def test_head_keeps_the_length_and_sends_no_body(aiohttp_server, start_gateway) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(routes_for(str(upstream.make_url(""))))
    response = await raw_request(
        gw.port, b"HEAD /v1/echo/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 200
    assert int(response.headers["content-length"]) > 0
    assert response.body == b""


async def test_via_names_the_protocol_version_the_client_spoke(
    aiohttp_server, start_gateway
) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(routes_for(str(upstream.make_url(""))))
    response = await raw_request(gw.port, b"GET /v1/echo/1 HTTP/1.0\r\nHost: x\r\n\r\n")
    assert response.status == 200
    assert response.headers["via"] == "1.0 gateway"
    assert header_values(orjson.loads(response.body), "Via") == ["1.0 gateway"]


async def test_not_modified_and_no_content_pass_through(start_gateway, raw_upstream, http) -> None:
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request_head(reader)
        if b"/echo/304" in head:
            writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
        else:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    port = await raw_upstream(upstream)
    gw = await start_gateway(routes_for(f"http://127.0.0.1:{port}"))
    async with http.get(f"{gw.url}/v1/echo/304") as response:
        assert response.status == 304
        assert response.headers["ETag"] == '"v1"'
        assert await response.read() == b""
    async with http.get(f"{gw.url}/v1/echo/204") as response:
        assert response.status == 204


async def test_expect_continue_is_answered(aiohttp_server, start_gateway) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(routes_for(str(upstream.make_url(""))))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"POST /v1/echo/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200")
    assert b'"body_length": 5' in rest


async def test_connect_failure_is_502(start_gateway, http) -> None:
    gw = await start_gateway(routes_for(f"http://127.0.0.1:{free_port()}"))
    async with http.get(f"{gw.url}/v1/echo/1") as response:
        assert response.status == 502
        problem = orjson.loads(await response.read())
    assert problem["status"] == 502
    assert problem["request_id"] == response.headers["X-Request-Id"]
    assert 'desc="error"' in response.headers["Server-Timing"]


async def test_upstream_timeout_is_504(start_gateway, raw_upstream, http) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        await asyncio.sleep(5)

    port = await raw_upstream(silent)
    gw = await start_gateway(routes_for(f"http://127.0.0.1:{port}", timeout="200ms"))
    async with http.get(f"{gw.url}/v1/echo/1") as response:
        assert response.status == 504
        assert 'desc="timeout"' in response.headers["Server-Timing"]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-ten-b",  # short body, then close
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",  # unparseable length
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"garbage that is not HTTP\r\n\r\n",
        b"",  # closes without answering
    ],
)
async def test_upstream_breaking_the_protocol_is_502(
    start_gateway, raw_upstream, http, reply: bytes
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(reply)
        await writer.drain()

    port = await raw_upstream(broken)
    gw = await start_gateway(routes_for(f"http://127.0.0.1:{port}"))
    async with http.get(f"{gw.url}/v1/echo/1") as response:
        assert response.status == 502
        assert response.content_type == "application/problem+json"


async def test_reset_mid_stream_truncates_the_client_response(
    start_gateway, raw_upstream, http
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"z" * 200_000)
        await writer.drain()
        writer.transport.abort()

    port = await raw_upstream(cut)
    gw = await start_gateway(routes_for(f"http://127.0.0.1:{port}"))
    async with http.get(f"{gw.url}/v1/echo/1") as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_round_robin_and_passive_health(aiohttp_server, start_gateway, http) -> None:
    def named(name: str) -> web.Application:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=name)

        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        return app

    first = await aiohttp_server(named("first"))
    second = await aiohttp_server(named("second"))
    dead = f"http://127.0.0.1:{free_port()}"
    origins = [str(s.make_url("")).rstrip("/") for s in (first, second)]
    gw = await start_gateway(
        f"""
        upstreams:
          pair:
            targets: [{origins[0]}, {origins[1]}, {dead}]
            health: {{max_failures: 1, cooldown: 30s}}
        routes:
          - path: /x
            proxy: {{upstream: pair}}
        """
    )
    seen = []
    for _ in range(9):
        async with http.get(f"{gw.url}/x") as response:
            # The dead target's connect failure is retried on a healthy one.
            assert response.status == 200
            seen.append(await response.text())
    assert set(seen) == {"first", "second"}
    # After one failure the dead target cools down: the rest alternate evenly.
    assert abs(seen.count("first") - seen.count("second")) <= 2


async def test_a_retried_request_carries_the_new_targets_host(
    aiohttp_server, start_gateway, http
) -> None:
    """The headers made for the first target are sent again to the second: its own
    ``Host`` replaces the first one's, and nothing else the first attempt set is doubled."""
    upstream = await aiohttp_server(echo_app())
    origin = str(upstream.make_url("")).rstrip("/")
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await start_gateway(
        f"""
        upstreams:
          pair:
            targets: [{dead}, {origin}]
            health: {{max_failures: 1, cooldown: 30s}}
        routes:
          - path: /v1/echo/{{id}}
            proxy: {{upstream: pair}}
        """
    )
    # Round robin starts with the dead target: the first request is the retried one.
    async with http.get(f"{gw.url}/v1/echo/1") as response:
        assert response.status == 200
        payload = orjson.loads(await response.read())
    assert header_values(payload, "Host") == [origin.removeprefix("http://")]
    for name in ("X-Request-Id", "Via", "X-Forwarded-For", "traceparent", "Gateway-Budget-Ms"):
        assert len(header_values(payload, name)) == 1, name


async def test_request_id_kept_when_sane(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(routes_for(str(upstream.make_url(""))))
    async with http.get(f"{gw.url}/v1/echo/1", headers={"X-Request-Id": "abc-123"}) as response:
        assert response.headers["X-Request-Id"] == "abc-123"
        payload = orjson.loads(await response.read())
    assert header_values(payload, "X-Request-Id") == ["abc-123"]
    async with http.get(
        f"{gw.url}/v1/echo/1", headers={"X-Request-Id": "bad id with spaces\t"}
    ) as response:
        assert response.headers["X-Request-Id"] != "bad id with spaces"


async def test_oversized_header_is_431_problem(aiohttp_server, start_gateway) -> None:
    upstream = await aiohttp_server(echo_app())
    gw = await start_gateway(
        routes_for(str(upstream.make_url(""))), server="limits: {max_header_size: 1KiB}"
    )
    response = await raw_request(
        gw.port,
        b"GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n",
    )
    assert response.status == 431
    assert response.headers["content-type"].startswith("application/problem+json")
    assert orjson.loads(response.body)["status"] == 431


async def test_client_disconnect_mid_body_leaks_nothing(aiohttp_server, start_gateway) -> None:
    arrived = asyncio.Event()

    async def slow_reader(request: web.Request) -> web.Response:
        arrived.set()
        await request.read()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_post("/echo/{id}", slow_reader)
    upstream = await aiohttp_server(app)
    gw = await start_gateway(routes_for(str(upstream.make_url(""))))
    baseline = len(asyncio.all_tasks())
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"POST /v1/echo/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"p" * 1000
    )
    await writer.drain()
    await asyncio.wait_for(arrived.wait(), 5)
    writer.transport.abort()
    for _ in range(100):
        if gw.gateway.runtime.in_flight == 0 and len(asyncio.all_tasks()) <= baseline:
            break
        await asyncio.sleep(0.02)
    assert gw.gateway.runtime.in_flight == 0
    assert len(asyncio.all_tasks()) <= baseline


async def test_interim_responses_from_upstream_give_the_final_one(
    start_gateway, raw_upstream, http
) -> None:
    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
        )
        await writer.drain()

    port = await raw_upstream(hints)
    gw = await start_gateway(routes_for(f"http://127.0.0.1:{port}"))
    async with http.get(f"{gw.url}/v1/echo/1") as response:
        assert response.status == 200
        assert await response.read() == b"final"
