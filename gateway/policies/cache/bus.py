"""Cache invalidations shared between nodes through Redis pub/sub.

A node that invalidates publishes the paths (a JSON list) or a purged prefix (a JSON
object ``{"prefix": ...}``); every node (itself included, harmlessly) drops its entries
for them. Best effort by design: a node that misses a message (Redis
down) keeps serving its entry until it expires, which is why cached routes should keep
their freshness lifetimes short when writes elsewhere must be seen quickly.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson

from ...stores.channel import ChannelListener
from .policy import ResponseCache


class InvalidationBus:
    def __init__(self, cache: ResponseCache, url: str, channel: str) -> None:
        self._cache = cache
        self._channel = ChannelListener(url, channel, self._received, what="cache invalidation")
        self._sends: set[asyncio.Task[None]] = set()

    @property
    def received(self) -> int:
        return self._channel.received

    @property
    def errors(self) -> int:
        """Failed publishes and lost subscriptions, for the metrics."""
        return self._channel.errors

    async def start(self) -> None:
        await self._channel.start()
        self._cache.publish = self._publish
        self._cache.publish_prefix = self._publish_prefix

    def _publish(self, paths: list[str]) -> None:
        self._send_soon(orjson.dumps(paths))

    def _publish_prefix(self, prefix: str) -> None:
        self._send_soon(orjson.dumps({"prefix": prefix}))

    def _send_soon(self, message: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._channel.publish(message))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _received(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(message, list):
            self._cache.invalidate([p for p in message if isinstance(p, str)], announce=False)
        elif isinstance(message, dict) and isinstance(message.get("prefix"), str):
            self._cache.purge_prefix(message["prefix"], announce=False)

    async def close(self) -> None:
        for task in list(self._sends):
            with contextlib.suppress(Exception):
                await task
        await self._channel.close()
