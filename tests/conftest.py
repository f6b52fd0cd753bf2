"""Shared fixtures: gateways on ephemeral ports, raw HTTP helpers, upstream servers."""

from __future__ import annotations

import asyncio
import gc
import re
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_config
from gateway.context import Clock
from gateway.server import Gateway
from tests.redis_server import private_redis_server, redis_server, redis_url


def pytest_collection_finish(session: pytest.Session) -> None:
    """Take what collection built out of the garbage collector's sight.

    A full collection in this process scanned everything pytest and the test modules
    hold: about 170,000 objects, 100 to 170 ms, enough to push a request past a route's
    50 ms budget mid-test (the likely cause of a rare 504 in the demo config's fan-out
    test). Frozen, they are never scanned (a full collection then takes under 1 ms),
    as the gateway freezes its own start-up heap.
    """
    gc.freeze()


__all__ = ["private_redis_server", "redis_server", "redis_url"]


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str
    port: int
    config_dir: Path

    def write_routes(self, text: str) -> None:
        (self.config_dir / "routes.yaml").write_text(textwrap.dedent(text))


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


def write_gateway_config(folder: Path, routes: str, server: str = "", top: str = "") -> Path:
    """``gateway.yaml`` (port 0, no access log, no watcher unless asked) + ``routes.yaml``."""
    server_block = textwrap.dedent(server).strip()
    main = folder / "gateway.yaml"
    defaults = "".join(
        f"  {line}\n"
        for line in ("access_log: 'off'", "shutdown_timeout: 2s")
        if line.split(":")[0] not in server_block
    )
    main.write_text(
        "server:\n"
        "  listen: {host: 127.0.0.1, port: 0}\n"
        + defaults
        + textwrap.indent(server_block, "  ")
        + ("\n" if server_block else "")
        + textwrap.dedent(top).strip()
        + ("\n" if top.strip() else "")
        + "include: [routes.yaml]\n"
    )
    (folder / "routes.yaml").write_text(textwrap.dedent(routes))
    return main


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    running: list[Gateway] = []

    async def start(
        routes: str, server: str = "", top: str = "", clock: Clock | None = None
    ) -> RunningGateway:
        folder = tmp_path / f"gw{len(running)}"
        folder.mkdir()
        main = write_gateway_config(folder, routes, server, top)
        gateway = Gateway(load_config(main), clock=clock)
        await gateway.start()
        running.append(gateway)
        return RunningGateway(gateway, f"http://127.0.0.1:{gateway.port}", gateway.port, folder)

    yield start
    for gateway in running:
        await gateway.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(port: int, data: bytes, wait: float = 5.0) -> RawResponse:
    """Send bytes as they are (no client-side normalisation) and read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[RawHandler], Awaitable[int]]]:
    """A TCP server whose handler writes whatever bytes it likes: for upstreams that
    break the HTTP protocol."""
    servers: list[asyncio.Server] = []

    async def start(handler: RawHandler) -> int:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(guarded, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def status_within(
    http: aiohttp.ClientSession, url: str, wanted: int, seconds: float = 5.0
) -> int:
    """Poll ``url`` until it answers ``wanted`` (or time runs out); the last status."""
    status = -1
    for _ in range(int(seconds / 0.05)):
        async with http.get(url) as response:
            status = response.status
        if status == wanted:
            break
        await asyncio.sleep(0.05)
    return status


ROOT = Path(__file__).resolve().parents[1]


async def run_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def spawn_gateway(config: Path) -> tuple[asyncio.subprocess.Process, int]:
    process = await run_cli("run", "-c", str(config))
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        assert line, "the gateway exited before it listened"
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return process, int(match.group(1))


async def stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), 20)
