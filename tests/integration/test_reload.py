"""Hot reload: file changes and broken edits, with requests in flight."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from aiohttp import web

from gateway import server as server_module
from gateway.config.loader import load_config
from gateway.reload import watch_config
from tests.conftest import status_within

pytestmark = pytest.mark.timeout(30)


def text_app(text: str, delay: float = 0.0) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def proxy_route(path: str, url: str) -> str:
    return f"  - path: {path}\n    proxy: {{url: '{url}'}}\n"


async def test_file_change_is_picked_up(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(text_app("hello"))
    url = str(upstream.make_url("")).rstrip("/")
    gw = await start_gateway("routes:\n" + proxy_route("/a", url))
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_config(gw.gateway, stop))
    try:
        await asyncio.sleep(0.2)  # let the watcher arm itself
        async with http.get(f"{gw.url}/b") as response:
            assert response.status == 404
        gw.write_routes("routes:\n" + proxy_route("/a", url) + proxy_route("/b", url))
        assert await status_within(http, f"{gw.url}/b", 200) == 200
        assert gw.gateway.reloads_ok == 1
    finally:
        stop.set()
        watcher.cancel()


async def test_broken_edit_keeps_the_old_routes(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(text_app("hello"))
    url = str(upstream.make_url("")).rstrip("/")
    gw = await start_gateway("routes:\n" + proxy_route("/a", url))
    gw.write_routes(
        "routes:\n  - path: /a\n    proxy:\n      url: " + url + "\n      timeout: soon\n"
    )
    assert await gw.gateway.reload() is False
    error = gw.gateway.last_reload_error
    assert error is not None
    assert "routes.yaml:5: routes[0].proxy.timeout: not a duration" in error
    async with http.get(f"{gw.url}/a") as response:
        assert response.status == 200
        assert await response.text() == "hello"
    assert gw.gateway.reloads_failed == 1


async def test_in_flight_requests_finish_on_the_old_runtime(
    aiohttp_server, start_gateway, http
) -> None:
    old = await aiohttp_server(text_app("old", delay=0.4))
    new = await aiohttp_server(text_app("new"))
    old_url = str(old.make_url("")).rstrip("/")
    new_url = str(new.make_url("")).rstrip("/")
    gw = await start_gateway("routes:\n" + proxy_route("/a", old_url))

    async def fetch() -> tuple[int, str]:
        async with http.get(f"{gw.url}/a") as response:
            return response.status, await response.text()

    slow = asyncio.create_task(fetch())
    await asyncio.sleep(0.1)
    gw.write_routes("routes:\n" + proxy_route("/a", new_url))
    assert await gw.gateway.reload() is True
    assert await fetch() == (200, "new")
    assert await slow == (200, "old")


async def test_no_request_is_dropped_during_reloads(aiohttp_server, start_gateway, http) -> None:
    upstream = await aiohttp_server(text_app("ok"))
    url = str(upstream.make_url("")).rstrip("/")
    gw = await start_gateway("routes:\n" + proxy_route("/a", url))
    statuses: list[int] = []

    async def client() -> None:
        for _ in range(60):
            async with http.get(f"{gw.url}/a") as response:
                statuses.append(response.status)
                await response.read()

    async def reloader() -> None:
        for index in range(6):
            timeout = f"{index + 1}s"
            gw.write_routes(
                f"routes:\n  - path: /a\n    proxy: {{url: '{url}', timeout: {timeout}}}\n"
            )
            assert await gw.gateway.reload()
            await asyncio.sleep(0.02)

    await asyncio.gather(client(), client(), client(), reloader())
    assert statuses == [200] * 180
    assert gw.gateway.reloads_ok == 6


async def test_a_reload_under_way_when_stop_begins_finishes_and_leaves_nothing_open(
    aiohttp_server, start_gateway, monkeypatch
) -> None:
    upstream = await aiohttp_server(text_app("hello"))
    url = str(upstream.make_url("")).rstrip("/")
    gw = await start_gateway("routes:\n" + proxy_route("/a", url))
    gateway = gw.gateway
    # The real loader, held at its start until the shutdown has begun.
    entered, release = threading.Event(), threading.Event()
    load = load_config

    def held_load(path: str) -> Any:
        entered.set()
        release.wait(10)
        return load(path)

    monkeypatch.setattr(server_module, "load_config", held_load)
    gw.write_routes("routes:\n" + proxy_route("/a", url) + proxy_route("/b", url))
    reloading = asyncio.ensure_future(gateway.reload())
    assert await asyncio.to_thread(entered.wait, 10)
    stopping = asyncio.ensure_future(gateway.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done(), "the shutdown must wait for the reload under way"
    assert not await gateway.reload(), "no new reload once the shutdown has begun"

    release.set()
    assert await asyncio.wait_for(reloading, 10)  # it began first: it completes
    await asyncio.wait_for(stopping, 10)
    # What the reload built was cleaned up with the rest: its pools closed, the old
    # runtime's retirement not left running.
    assert all(task.done() for task in gateway._retiring)
    assert gateway._registry._pools == {}
    assert "/b" in {route.path for route in gateway.runtime.routes}
