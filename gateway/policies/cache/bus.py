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
import logging

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .policy import ResponseCache

log = logging.getLogger("gateway.cache")


class InvalidationBus:
    def __init__(self, cache: ResponseCache, url: str, channel: str) -> None:
        self._cache = cache
        self._channel = channel
        self._redis = aioredis.from_url(url, socket_connect_timeout=1.0)
        self._listener: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self.received = 0
        #: Failed publishes and lost subscriptions, for the metrics.
        self.errors = 0

    async def start(self) -> None:
        ready = asyncio.get_running_loop().create_future()
        self._listener = asyncio.get_running_loop().create_task(self._listen(ready))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ready), 2.0)
        self._cache.publish = self._publish
        self._cache.publish_prefix = self._publish_prefix

    def _publish(self, paths: list[str]) -> None:
        self._send_soon(orjson.dumps(paths))

    def _publish_prefix(self, prefix: str) -> None:
        self._send_soon(orjson.dumps({"prefix": prefix}))

    def _send_soon(self, message: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._send(message))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, message: bytes) -> None:
        try:
            await self._redis.publish(self._channel, message)
        except (RedisError, OSError) as exc:
            self.errors += 1
            log.warning("cache invalidation not published (%s)", exc)

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._channel)
                if not ready.done():
                    ready.set_result(None)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        paths = orjson.loads(message["data"])
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(paths, list):
                        self.received += 1
                        self._cache.invalidate(
                            [p for p in paths if isinstance(p, str)], announce=False
                        )
                    elif isinstance(paths, dict) and isinstance(paths.get("prefix"), str):
                        self.received += 1
                        self._cache.purge_prefix(paths["prefix"], announce=False)
            except (RedisError, OSError) as exc:
                self.errors += 1
                log.warning("cache invalidation channel lost (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for task in list(self._sends):
            with contextlib.suppress(Exception):
                await task
        await self._redis.aclose()
