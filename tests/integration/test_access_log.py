"""The JSON access log: one line per request, written off the event loop."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web

from gateway.observability import ENCODE_EVERY

pytestmark = pytest.mark.timeout(30)


async def _ok_upstream(aiohttp_server) -> str:
    """A real upstream answering every GET with ``{"ok": true}``: its base URL."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    upstream = await aiohttp_server(app)
    return str(upstream.make_url("")).rstrip("/")


async def test_one_json_line_per_request(aiohttp_server, start_gateway, http, tmp_path) -> None:
    url = await _ok_upstream(aiohttp_server)
    log_path = tmp_path / "access.log"
    gw = await start_gateway(
        f"""
        routes:
          - name: single
            path: /p/{{id}}
            proxy: {{url: '{url}'}}
          - name: both
            path: /f/{{id}}
            fanout:
              backends:
                one: {{url: '{url}/one'}}
                two: {{url: '{url}/two'}}
        """,
        server=f"access_log: '{log_path}'",
    )
    async with http.get(f"{gw.url}/p/1?token=secret", headers={"X-Request-Id": "req-1"}):
        pass
    async with http.get(f"{gw.url}/f/2"):
        pass
    async with http.get(f"{gw.url}/nowhere"):
        pass
    await gw.gateway.stop()  # flushes the log

    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert [line["route"] for line in lines] == ["single", "both", None]
    assert [line["status"] for line in lines] == [200, 200, 404]
    first = lines[0]
    assert first["request_id"] == "req-1"
    assert first["path"] == "/p/1"  # never the query string: it may carry secrets
    assert first["duration_ms"] >= 0
    assert [u["name"] for u in first["upstreams"]] == ["upstream"]
    assert [u["name"] for u in lines[1]["upstreams"]] == ["one", "two"]
    assert all(u["outcome"] == "ok" for u in lines[1]["upstreams"])
    assert "upstreams" not in lines[2]


async def test_lines_come_in_order_across_batches_without_waiting_for_stop(
    aiohttp_server, start_gateway, http, tmp_path
) -> None:
    """More requests than one encoding batch, and a remainder that only the flush
    timer writes: every line arrives, in request order, while the gateway runs."""

    url = await _ok_upstream(aiohttp_server)
    log_path = tmp_path / "access.log"
    gw = await start_gateway(
        f"""
        routes:
          - name: single
            path: /p/{{id}}
            proxy: {{url: '{url}'}}
        """,
        server=f"access_log: '{log_path}'",
    )
    count = 2 * ENCODE_EVERY + 7
    for number in range(count):
        async with http.get(f"{gw.url}/p/{number}", headers={"X-Request-Id": f"r-{number}"}):
            pass
    # The last 7 are in no full batch: the flush timer (100 ms) must write them.
    for _ in range(200):
        if log_path.exists() and log_path.read_bytes().count(b"\n") >= count:
            break
        await asyncio.sleep(0.02)
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert [line["request_id"] for line in lines] == [f"r-{n}" for n in range(count)]
    assert [line["path"] for line in lines] == [f"/p/{n}" for n in range(count)]
    await gw.gateway.stop()
    assert log_path.read_bytes().count(b"\n") == count  # nothing written twice
