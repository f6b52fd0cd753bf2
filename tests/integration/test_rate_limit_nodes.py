"""Two gateway processes, one Redis: a consumer's limit holds across the nodes.

Both processes run ``python -m gateway run`` on the same config (a sqlite credential
store and pepper they share, a Redis they share). Ten client loops alternate between
them for five seconds; the 200s must come to ``burst + rate * seconds`` within 5 %.
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

from gateway.context import SystemClock
from gateway.policies.auth import manage
from gateway.policies.auth.secrets import Peppers
from gateway.stores.sqlite import SqliteCredentialStore
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
RATE, BURST = 50, 10
SECONDS = 5.0
LOOPS = 10


def ok_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    return app


def write_config(folder: Path, shared: Path, redis_url: str, upstream: str) -> Path:
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
            auth:
              sqlite_path: {shared / "credentials.db"}
              pepper_file: {shared / "pepper.json"}
            rate_limits:
              store: redis
              redis_url: '{redis_url}'
              redis_timeout: 250ms
              plans:
                free: {{rate: {RATE}/s, burst: {BURST}}}
            routes:
              - path: /r
                auth: [api_key]
                proxy: {{url: '{upstream}'}}
                rate_limit: {{by: consumer, on_store_down: fail_closed}}
            """
        )
    )
    return config


class Node:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.log: list[str] = []
        self._drain = asyncio.ensure_future(self._read_stderr())

    @classmethod
    async def spawn(cls, config: Path) -> Node:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert process.stderr is not None
        seen = []
        try:
            while True:
                line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
                seen.append(line)
                assert line, "the gateway exited before it listened:\n" + "".join(seen)
                match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if match:
                    return cls(process, int(match.group(1)))
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise

    async def _read_stderr(self) -> None:
        # Keep the pipe empty, so the gateway never blocks on a full one.
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.log.append(line.decode())

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), 20)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            await self._drain
        return code


async def test_a_limit_holds_across_two_gateway_processes(
    aiohttp_server: Any, private_redis_server: RedisServer, tmp_path: Path
) -> None:
    upstream = await aiohttp_server(ok_app())
    upstream_url = str(upstream.make_url("")).rstrip("/")
    shared = tmp_path / "shared"
    shared.mkdir()
    configs = [
        write_config(tmp_path / name, shared, private_redis_server.url, upstream_url)
        for name in ("a", "b")
    ]
    assert configs[0].read_text() == configs[1].read_text()

    store = SqliteCredentialStore(shared / "credentials.db")
    await store.open()
    try:
        created = await manage.create_api_key(
            store,
            Peppers.load_or_create(shared / "pepper.json"),
            SystemClock(),
            consumer_id="acme",
        )
    finally:
        await store.close()

    nodes: list[Node] = []
    try:
        for node in await asyncio.gather(*(Node.spawn(config) for config in configs)):
            nodes.append(node)
        urls = [f"http://127.0.0.1:{node.port}/r" for node in nodes]
        headers = {"X-API-Key": created.key}
        results: list[tuple[float, float, int, int]] = []  # (sent, answered, node, status)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=LOOPS * 2)) as http:

            async def loop(index: int, until: float) -> None:
                turn = index
                while time.monotonic() < until:
                    which = turn % 2
                    turn += 1
                    sent = time.monotonic()
                    async with http.get(urls[which], headers=headers) as response:
                        await response.read()
                        results.append((sent, time.monotonic(), which, response.status))

            until = time.monotonic() + SECONDS
            await asyncio.gather(*(loop(index, until) for index in range(LOOPS)))

        statuses = {status for _, _, _, status in results}
        assert statuses <= {200, 429}, statuses
        admitted = [(node, sent) for sent, _, node, status in results if status == 200]
        elapsed = max(answered for _, answered, _, _ in results) - min(
            sent for sent, _, _, _ in results
        )
        expected = BURST + RATE * elapsed
        assert len(results) > 3 * expected, "too few requests to test the limit"
        assert abs(len(admitted) - expected) <= 0.05 * expected, (
            f"{len(admitted)} admitted in {elapsed:.2f} s; expected {expected:.0f} ± 5 %"
        )
        # Both nodes admitted their share: the limit is one, not one per node.
        per_node = [sum(1 for node, _ in admitted if node == which) for which in (0, 1)]
        assert min(per_node) > 0.25 * len(admitted), per_node
    finally:
        codes = await asyncio.gather(*(node.stop() for node in nodes))
    assert codes == [0, 0], [node.log for node in nodes]
