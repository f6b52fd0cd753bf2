"""UpstreamPool.send: headers handed to the request past the session, and only there."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from gateway.config.model import HealthSpec, PoolSpec
from gateway.context import SystemClock
from gateway.upstream.pool import PoolKey, UpstreamPool
from tests.conftest import free_port
from tests.integration.auth_helpers import echo_app


def _pool(origin: str) -> UpstreamPool:
    return UpstreamPool(PoolKey("echo", (origin,), PoolSpec(), HealthSpec()), SystemClock())


async def _headers_seen(response: aiohttp.ClientResponse) -> list[list[str]]:
    try:
        payload = orjson.loads(await response.read())
    finally:
        response.release()
    return list(payload["headers"])


async def test_send_sends_exactly_the_headers_handed_to_it(aiohttp_server) -> None:
    server = await aiohttp_server(echo_app())
    origin = str(server.make_url("")).rstrip("/")
    pool = _pool(origin)
    try:
        headers = CIMultiDict([("X-One", "1"), ("X-Many", "a"), ("X-Many", "b")])
        response = await pool.send("GET", URL(origin + "/x"), headers)
        seen = await _headers_seen(response)
    finally:
        await pool.close()
    host = origin.removeprefix("http://")
    # The repeated name kept both values in order; aiohttp added Host and nothing else
    # (no User-Agent, Accept or Accept-Encoding of its own).
    assert sorted(map(tuple, seen)) == sorted(
        [("X-One", "1"), ("X-Many", "a"), ("X-Many", "b"), ("Host", host)]
    )
    # The caller's dict is not the one the request filled in: it may be sent again.
    assert "Host" not in headers


async def test_headers_of_a_failed_send_do_not_reach_the_next_request(aiohttp_server) -> None:
    server = await aiohttp_server(echo_app())
    origin = str(server.make_url("")).rstrip("/")
    dead = f"http://127.0.0.1:{free_port()}"
    pool = _pool(origin)
    try:
        with pytest.raises(aiohttp.ClientConnectorError):
            await pool.send("GET", URL(dead + "/x"), CIMultiDict({"X-Stale": "yes"}))
        # A request of this task made without send (a JWKS fetch, a precondition
        # check) sends its own headers, not those left from the failed one.
        async with pool.session.get(URL(origin + "/y"), headers={"X-Own": "1"}) as response:
            payload = orjson.loads(await response.read())
    finally:
        await pool.close()
    names = [name for name, _ in payload["headers"]]
    assert "X-Own" in names
    assert "X-Stale" not in names
