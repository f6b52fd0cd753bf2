"""Two gateway processes, one Redis: a write through one node invalidates the other's
cached entries (Redis pub/sub) within 100 ms of the write's response.

Both processes run ``python -m gateway run`` on the same config, in front of one
upstream whose representation changes on every successful write.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
#: The longest a write may take to reach the other node's cache.
PROPAGATION = 0.100
POLL_EVERY = 0.010


class Users:
    """The upstream: users with a version each, and a dashboard per user."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.gets = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/users/{id}", self.get_user)
        app.router.add_put("/users/{id}", self.put_user)
        app.router.add_get("/dashboard/{id}", self.get_dashboard)
        return app

    async def get_user(self, request: web.Request) -> web.Response:
        self.gets += 1
        user = request.match_info["id"]
        return web.Response(text=f"user {user} v{self.versions.get(user, 1)}")

    async def get_dashboard(self, request: web.Request) -> web.Response:
        self.gets += 1
        user = request.match_info["id"]
        return web.Response(text=f"dashboard {user} v{self.versions.get(user, 1)}")

    async def put_user(self, request: web.Request) -> web.Response:
        user = request.match_info["id"]
        self.versions[user] = self.versions.get(user, 1) + 1
        return web.Response(text=f"user {user} v{self.versions[user]}")


def write_config(folder: Path, redis_url: str, upstream: str) -> Path:
    folder.mkdir()
    config = folder / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            server:
              listen: {{host: 127.0.0.1, port: 0}}
              access_log: 'off'
              shutdown_timeout: 2s
              watch: false
            cache:
              redis_url: '{redis_url}'
              channel: 'test:cache:invalidate'
            routes:
              - path: /v1/users/{{id}}
                methods: [GET, PUT]
                cache: {{ttl: 60s}}
                invalidates: ['/v1/dashboard/{{id}}']
                proxy: {{url: '{upstream}', path: '/users/{{id}}'}}
              - path: /v1/dashboard/{{id}}
                cache: {{ttl: 60s}}
                proxy: {{url: '{upstream}', path: '/dashboard/{{id}}'}}
            """
        )
    )
    return config


class Node:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    @classmethod
    async def spawn(cls, config: Path) -> Node:
        log = config.parent / "stderr.log"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "run",
                "-c",
                str(config),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                cwd=ROOT,
            )
        node = cls(process, 0, log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
            if match:
                node.url = f"http://127.0.0.1:{match.group(1)}"
                return node
            if process.returncode is not None:
                break
            await asyncio.sleep(0.02)
        await node.stop()
        raise AssertionError(f"the gateway did not start:\n{log.read_text()}")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    async with http.get(url) as response:
        assert response.status == 200
        return await response.text(), response.headers.get("Cache-Status", "")


async def test_a_write_on_one_node_reaches_the_other_s_cache_within_100ms(
    aiohttp_server: Any, private_redis_server: RedisServer, tmp_path: Path, http: Any
) -> None:
    users = Users()
    upstream = await aiohttp_server(users.app())
    upstream_url = str(upstream.make_url("")).rstrip("/")
    nodes: list[Node] = []
    try:
        for name in ("one", "two"):
            config = write_config(tmp_path / name, private_redis_server.url, upstream_url)
            nodes.append(await Node.spawn(config))
        one, two = nodes

        # Warm node two (and node one); both now answer from their caches.
        for node in (two, one):
            for path in ("/v1/users/1", "/v1/dashboard/1", "/v1/users/2"):
                await get(http, node.url + path)
        gets = users.gets
        text, status = await get(http, f"{two.url}/v1/users/1")
        assert text == "user 1 v1"
        assert status.startswith("gateway; hit")
        assert (await get(http, f"{two.url}/v1/dashboard/1"))[1].startswith("gateway; hit")
        assert users.gets == gets

        async with http.put(f"{one.url}/v1/users/1") as response:
            assert response.status == 200
            assert await response.text() == "user 1 v2"
        written = time.monotonic()

        # Node two: poll every ~10 ms until it misses and serves the new version.
        seen: list[tuple[float, str, str]] = []
        while True:
            text, status = await get(http, f"{two.url}/v1/users/1")
            elapsed = time.monotonic() - written
            seen.append((elapsed, text, status))
            if not status.startswith("gateway; hit") or elapsed > 2:
                break
            await asyncio.sleep(POLL_EVERY)
        elapsed, text, status = seen[-1]
        assert status == "gateway; fwd=miss; stored", seen
        assert text == "user 1 v2"
        assert elapsed <= PROPAGATION, f"node two missed only {elapsed * 1000:.1f} ms after"

        # The related route went too, on both nodes; other users stayed cached.
        for node in (one, two):
            assert await get(http, f"{node.url}/v1/dashboard/1") == (
                "dashboard 1 v2",
                "gateway; fwd=miss; stored",
            )
            assert (await get(http, f"{node.url}/v1/users/2"))[1].startswith("gateway; hit")
        assert (await get(http, f"{one.url}/v1/users/1"))[0] == "user 1 v2"
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                await node.stop()
    assert all(node.process.returncode is not None for node in nodes)
