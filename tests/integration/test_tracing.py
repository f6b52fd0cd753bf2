"""W3C Trace Context over real HTTP: what upstreams receive, and the access log."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

pytestmark = pytest.mark.timeout(30)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE}-{PARENT}-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


class Echo:
    """An upstream that records the trace headers of every request it gets."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, list[str]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            (
                request.path,
                request.headers.get("traceparent"),
                request.headers.getall("tracestate", []),
            )
        )
        return web.json_response({"path": request.path})

    def parents(self) -> list[tuple[str, str, str]]:
        """(trace id, span id, flags) of each request seen, in order."""
        out = []
        for _, traceparent, _ in self.seen:
            assert traceparent is not None
            match = TRACEPARENT.fullmatch(traceparent)
            assert match is not None, traceparent
            out.append((match.group(1), match.group(2), match.group(3)))
        return out


@pytest.fixture
async def echo(aiohttp_server: Any) -> Echo:
    up = Echo()
    app = web.Application()
    app.router.add_get("/{tail:.*}", up.handle)
    server = await aiohttp_server(app)
    up.url = str(server.make_url("")).rstrip("/")
    return up


def routes(url: str) -> str:
    return f"""
    routes:
      - name: single
        path: /p/{{id}}
        proxy: {{url: '{url}'}}
      - name: many
        path: /f/{{id}}
        fanout:
          backends:
            one: {{url: '{url}/one'}}
            two: {{url: '{url}/two'}}
            three: {{url: '{url}/three'}}
    """


async def get(http: aiohttp.ClientSession, url: str, **headers: str) -> int:
    async with http.get(url, headers=headers) as response:
        await response.read()
        return response.status


async def test_the_proxy_keeps_the_trace_with_a_new_span_and_the_state(
    start_gateway: Any, echo: Echo, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(routes(echo.url))
    state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    for _ in range(2):
        assert await get(http, f"{gw.url}/p/1", traceparent=INCOMING, tracestate=state) == 200
    (trace_a, span_a, flags_a), (trace_b, span_b, _) = echo.parents()
    assert trace_a == trace_b == TRACE
    assert flags_a == "01"
    assert len({span_a, span_b, PARENT}) == 3
    assert [tracestate for _, _, tracestate in echo.seen] == [[state], [state]]


async def test_each_fanout_call_gets_its_own_span(
    start_gateway: Any, echo: Echo, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(routes(echo.url))
    assert await get(http, f"{gw.url}/f/1", traceparent=INCOMING, tracestate="congo=x") == 200
    assert await get(http, f"{gw.url}/f/2", traceparent=INCOMING) == 200
    parents = echo.parents()
    assert len(parents) == 6
    assert {trace for trace, _, _ in parents} == {TRACE}
    assert len({span for _, span, _ in parents} | {PARENT}) == 7
    assert sorted(tracestate for _, _, tracestate in echo.seen) == [[]] * 3 + [["congo=x"]] * 3


async def test_a_missing_traceparent_starts_a_trace(
    start_gateway: Any, echo: Echo, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(routes(echo.url))
    # A tracestate without its traceparent belongs to no trace the gateway continues.
    assert await get(http, f"{gw.url}/f/1", tracestate="congo=x") == 200
    assert await get(http, f"{gw.url}/p/1", tracestate="congo=x") == 200
    parents = echo.parents()
    fanout_traces = {trace for trace, _, _ in parents[:3]}
    assert len(fanout_traces) == 1  # one trace for the request, whatever it calls
    assert parents[3][0] not in fanout_traces  # and a new one for the next request
    assert all(flags == "00" for _, _, flags in parents)
    assert all(tracestate == [] for _, _, tracestate in echo.seen)


@pytest.mark.parametrize(
    "invalid",
    [
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"ff-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01-more",
        "garbage",
    ],
)
async def test_an_invalid_traceparent_is_replaced(
    start_gateway: Any, echo: Echo, http: aiohttp.ClientSession, invalid: str
) -> None:
    gw = await start_gateway(routes(echo.url))
    assert await get(http, f"{gw.url}/p/1", traceparent=invalid, tracestate="congo=x") == 200
    assert await get(http, f"{gw.url}/f/1", traceparent=invalid, tracestate="congo=x") == 200
    parents = echo.parents()
    assert all(trace not in (TRACE, "0" * 32) for trace, _, _ in parents)
    assert all(span != "0" * 16 for _, span, _ in parents)
    assert all(tracestate == [] for _, _, tracestate in echo.seen)


async def test_tracing_off_passes_the_headers_through(
    start_gateway: Any, echo: Echo, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(routes(echo.url), top="tracing: {enabled: false}")
    assert await get(http, f"{gw.url}/p/1", traceparent=INCOMING, tracestate="congo=x") == 200
    assert await get(http, f"{gw.url}/f/1", traceparent=INCOMING, tracestate="congo=x") == 200
    assert await get(http, f"{gw.url}/p/2") == 200
    assert [(traceparent, state) for _, traceparent, state in echo.seen] == [
        (INCOMING, ["congo=x"])
    ] * 4 + [(None, [])]


async def test_the_access_log_carries_the_trace_id(
    start_gateway: Any, echo: Echo, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log_path = tmp_path / "access.log"
    gw = await start_gateway(routes(echo.url), server=f"access_log: '{log_path}'")
    assert await get(http, f"{gw.url}/p/1", traceparent=INCOMING) == 200
    assert await get(http, f"{gw.url}/f/1") == 200
    assert await get(http, f"{gw.url}/nowhere", traceparent=INCOMING) == 404
    await gw.gateway.stop()  # flushes the log

    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    started = echo.parents()[1][0]  # the trace the gateway started for the fan-out
    assert [line["trace_id"] for line in lines] == [TRACE, started, TRACE]
