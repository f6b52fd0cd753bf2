"""``ChannelListener``: a Redis pub/sub subscription kept up, over a real (private) Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from gateway.stores.channel import ChannelListener
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(20)

CHANNEL = "test-channel"


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 3 s: {what}")


async def subscribers(client: Redis) -> int:
    counts = await client.pubsub_numsub(CHANNEL)
    return int(counts[0][1])


async def test_a_lost_subscription_comes_back_once_and_says_so(
    private_redis_server: RedisServer,
) -> None:
    received: list[bytes] = []
    resubscribed: list[bool] = []
    listener = ChannelListener(
        private_redis_server.url,
        CHANNEL,
        received.append,
        on_resubscribed=lambda: resubscribed.append(True),
        what="test message",
    )
    await listener.start()
    client = Redis.from_url(private_redis_server.url)
    try:
        await client.publish(CHANNEL, b"one")
        await until(lambda: received == [b"one"], "the first message")
        await client.client_kill_filter(_type="pubsub")
        await until(lambda: resubscribed == [True], "the subscription made again")
        # One subscriber: the lost connection is closed, not quietly subscribed again.
        await asyncio.sleep(0.3)
        assert await subscribers(client) == 1
        await client.publish(CHANNEL, b"two")
        await until(lambda: received == [b"one", b"two"], "a message after the loss")
        assert listener.errors == 1
    finally:
        await listener.close()
        await client.aclose()


async def test_a_handler_that_fails_does_not_end_the_subscription(
    private_redis_server: RedisServer,
) -> None:
    received: list[bytes] = []

    def handle(data: bytes) -> None:
        if data == b"bad":
            raise ValueError("cannot take this one")
        received.append(data)

    listener = ChannelListener(private_redis_server.url, CHANNEL, handle, what="test message")
    await listener.start()
    client = Redis.from_url(private_redis_server.url)
    try:
        for message in (b"bad", b"good"):
            await client.publish(CHANNEL, message)
        await until(lambda: received == [b"good"], "the message after the bad one")
    finally:
        await listener.close()  # and closing does not raise what the handler did
        await client.aclose()
