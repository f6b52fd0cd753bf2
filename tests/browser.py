"""Headless Chromium for tests, driven over the DevTools protocol with aiohttp.

``headless_page(url, profile)`` starts Debian's ``chromium`` (or ``chromium-browser``)
headless, opens ``url`` and yields a ``Page`` whose ``evaluate`` runs JavaScript in
it and returns the result. No WebDriver: the DevTools protocol is a WebSocket that
aiohttp already speaks, so no new dependency and no driver version to match.

A missing Chromium is a failure, not a skip: CI installs it (``.ci/run``), and a
skipped browser test would hide that the page never ran. ``$CHROMIUM`` overrides the
executable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

_START_TIMEOUT = 20.0
_CALL_TIMEOUT = 10.0
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium_executable() -> str:
    wanted = [os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else []
    for name in [*wanted, "chromium", "chromium-browser"]:
        found = shutil.which(name)
        if found is not None:
            return found
    pytest.fail(
        "Chromium was not found on PATH (tried chromium, chromium-browser): the dashboard's"
        " browser test needs it (apt-get install chromium, or set $CHROMIUM to its path)"
    )


class Page:
    """One page target, over its own DevTools WebSocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result; events that arrive meanwhile are dropped."""
        call_id = next(self._ids)
        await self._socket.send_json({"id": call_id, "method": method, "params": params})
        async with asyncio.timeout(_CALL_TIMEOUT):
            while True:
                message = await self._socket.receive_json()
                if message.get("id") != call_id:
                    continue
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def wait_for(self, expression: str, seconds: float) -> Any:
        """Evaluate ``expression`` until it is truthy (for up to ``seconds``); its value.

        An error counts as not yet: during a navigation the old document is gone and
        the new one may not have the elements yet.
        """
        last: Exception | None = None
        try:
            async with asyncio.timeout(seconds):
                while True:
                    try:
                        value = await self.evaluate(expression)
                    except RuntimeError as error:
                        last, value = error, None
                    if value:
                        return value
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(
                f"{expression!r} was not true within {seconds} s (last error: {last})"
            ) from None


@contextlib.asynccontextmanager
async def headless_page(url: str, profile: Path) -> AsyncIterator[Page]:
    """Chromium showing ``url``, with its profile in ``profile``; stopped on exit."""
    process = await asyncio.create_subprocess_exec(
        chromium_executable(),
        "--headless",
        # Tests run as root in CI containers, where Chromium's sandbox cannot start.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        # Its own process group, so that stopping it stops its helper processes too.
        start_new_session=True,
    )
    drain: asyncio.Task[None] | None = None
    try:
        assert process.stderr is not None
        browser_socket = await _devtools_url(process.stderr)
        # Chromium writes to stderr as long as it runs: keep reading so it never blocks.
        drain = asyncio.create_task(_discard(process.stderr))
        port = re.search(r":(\d+)/", browser_socket)
        assert port is not None
        async with aiohttp.ClientSession() as http:
            page_socket = await _page_socket(http, int(port.group(1)))
            async with http.ws_connect(page_socket, max_msg_size=0) as socket:
                page = Page(socket)
                await page.call("Runtime.enable")
                yield page
    finally:
        if drain is not None:
            drain.cancel()
        await _stop(process)


async def _devtools_url(stderr: asyncio.StreamReader) -> str:
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(_START_TIMEOUT):
            while line := await stderr.readline():
                seen.append(line)
                found = _LISTENING.search(line)
                if found:
                    return found.group(1).decode()
    except TimeoutError:
        pass
    tail = b"".join(seen[-20:]).decode(errors="replace")
    raise RuntimeError(f"Chromium did not open its DevTools port; it said:\n{tail}")


async def _page_socket(http: aiohttp.ClientSession, port: int) -> str:
    """The DevTools WebSocket of the page Chromium opened at start."""
    async with asyncio.timeout(_START_TIMEOUT):
        while True:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            for target in targets:
                if target.get("type") == "page":
                    return str(target["webSocketDebuggerUrl"])
            await asyncio.sleep(0.1)


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        # The browser is gone, but its helper processes (its own group) may not be.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(process.wait(), wait)
            return
        except TimeoutError:
            continue
