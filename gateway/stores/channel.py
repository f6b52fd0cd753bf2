"""One Redis pub/sub channel listened to for the life of the process.

Used where nodes tell each other that something they cache has changed (cache
invalidations, revoked API keys). The subscription is kept up: when it is lost, it is
made again a second later, and ``on_resubscribed`` runs once it is back, since
messages sent meanwhile are lost (pub/sub keeps nothing) and the listener may want to
drop whatever they could have been about. A connection that dies without an error (a
network partition) is noticed only when TCP gives up on it: the listeners treat what
arrives here as a speed-up over their own expiry, never as the only way to learn of a
change.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("gateway.channel")

#: How long ``start`` waits for the first subscription before going on without it.
_FIRST_SUBSCRIPTION_S = 2.0
_RETRY_S = 1.0


class ChannelListener:
    def __init__(
        self,
        url: str,
        channel: str,
        on_message: Callable[[bytes], None],
        *,
        on_resubscribed: Callable[[], None] | None = None,
        what: str,
    ) -> None:
        self._redis = aioredis.from_url(url, socket_connect_timeout=1.0)
        self._channel = channel
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        #: For the logs: what the channel carries ("cache invalidation").
        self._what = what
        self._task: asyncio.Task[None] | None = None
        self.received = 0
        #: Lost subscriptions and failed publishes, for the metrics.
        self.errors = 0

    async def start(self) -> None:
        """Subscribe; wait for it a little (a node that starts with Redis down runs on)."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        self._task = loop.create_task(self._listen(ready))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ready), _FIRST_SUBSCRIPTION_S)

    async def publish(self, message: bytes) -> None:
        """Best effort: a failure is logged and counted, never raised."""
        try:
            await self._redis.publish(self._channel, message)
        except (RedisError, OSError) as exc:
            self.errors += 1
            log.warning("%s not published (%s)", self._what, exc)

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        lost = False
        while True:
            try:
                # Closed on the way out, so a lost subscription leaves no connection
                # behind that the client library would quietly subscribe again.
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    if not ready.done():
                        ready.set_result(None)
                    if lost and self._on_resubscribed is not None:
                        self._guarded(self._on_resubscribed)
                    lost = False
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self.received += 1
                            self._guarded(functools.partial(self._on_message, message["data"]))
            except (RedisError, OSError) as exc:
                self.errors += 1
                lost = True
                log.warning("%s channel lost (%s); retrying", self._what, exc)
                await asyncio.sleep(_RETRY_S)

    def _guarded(self, call: Callable[[], None]) -> None:
        # A message the handler cannot take (a bug, an odd payload) must not end the
        # subscription for the rest of the process.
        try:
            call()
        except Exception:
            log.exception("%s not handled", self._what)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Whatever ended the task, the client below is still closed.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._redis.aclose()
