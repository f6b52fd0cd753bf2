"""Where rate-limit state lives: this process (``memory``) or Redis (every node).

Both answer ``decide(keys, limits, cost)`` with one atomic decision. The memory store
needs no lock: it has no ``await`` between reading and writing state. The Redis store
runs ``limiter.lua`` (loaded once, called by SHA): one round trip per decision, the
server's clock, expiry set in the same script.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from ...context import Clock
from ...stores.base import StoreError
from .arithmetic import Decision, Limit, Outcome, State, decide, expiry


class LimiterStore(Protocol):
    async def decide(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        """Raises ``StoreError`` when the store cannot answer."""

    async def close(self) -> None: ...


class MemoryLimiterStore:
    """State in a dict, on the injected clock; expired states are swept as it grows."""

    def __init__(self, clock: Clock, sweep_every: int = 10_000) -> None:
        self._clock = clock
        self._states: dict[str, tuple[State, float]] = {}
        self._sweep_every = sweep_every
        self._writes = 0

    async def decide(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        now = self._clock.wall()
        stored = self._states
        states: list[State] = []
        for key in keys:
            entry = stored.get(key)
            states.append(entry[0] if entry is not None and entry[1] > now else None)
        decision, new_states = decide(limits, states, cost, now)
        if decision.admitted:
            for key, limit, state in zip(keys, limits, new_states, strict=True):
                stored[key] = (state, now + expiry(limit, state, now))
            self._writes += 1
            if self._writes >= self._sweep_every:
                self._sweep(now)
        return decision

    def _sweep(self, now: float) -> None:
        self._writes = 0
        for key in [key for key, (_, until) in self._states.items() if until <= now]:
            del self._states[key]

    def __len__(self) -> int:
        return len(self._states)

    async def close(self) -> None:
        self._states.clear()


_SCRIPT = resources.files(__package__).joinpath("limiter.lua").read_text()


class RedisLimiterStore:
    """Decisions on Redis, sent in pipelines.

    Each decision is one ``EVALSHA``. Decisions asked for while a pipeline is in flight
    wait for it and then go together in the next one: under load many decisions share
    one round trip and one pass through the client library (whose per-command cost is
    most of a decision's), while a lone request goes out at once.
    """

    def __init__(self, client: aioredis.Redis, timeout: float) -> None:
        self._redis = client
        self._timeout = timeout
        self._sha: str | None = None
        self._queue: list[tuple[Sequence[str], list[float | int], asyncio.Future[list[int]]]] = []
        self._flushing: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, timeout: float) -> RedisLimiterStore:
        # One batch in flight at a time (see _flush): one connection, no pool to check
        # out from and back into per command. No per-command socket timeout either
        # (redis-py wraps every write in a task for it): _flush bounds each batch.
        client = aioredis.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            single_connection_client=True,
        )
        return cls(client, timeout)

    async def decide(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        args: list[float | int] = [cost]
        for limit in limits:
            args += [1 if limit.kind == "rate" else 2, limit.amount, limit.burst, limit.period]
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, future))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        return _decision(await future, len(limits))

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                batch = [entry for entry in batch if not entry[2].done()]  # timed out
                if not batch:
                    continue
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._send(batch)
                except TimeoutError:
                    # The connection may hold half an answer: drop it, fail the batch.
                    connection = self._redis.connection
                    if connection is not None:
                        await connection.disconnect(nowait=True)
                    error = StoreError("redis did not answer in time")
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(error)
        finally:
            self._flushing = None

    async def _send(
        self, batch: list[tuple[Sequence[str], list[float | int], asyncio.Future[list[int]]]]
    ) -> None:
        try:
            if self._sha is None:
                self._sha = await self._redis.script_load(_SCRIPT)
            results = await self._pipeline(batch, self._sha)
            if any(isinstance(result, NoScriptError) for result in results):
                # The server restarted (or was flushed): load the script again, once.
                self._sha = await self._redis.script_load(_SCRIPT)
                results = await self._pipeline(batch, self._sha)
        except (RedisError, OSError) as exc:
            error = StoreError(f"redis: {exc}")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(StoreError(f"redis: {result}"))
            else:
                future.set_result(result)

    async def _pipeline(
        self,
        batch: list[tuple[Sequence[str], list[float | int], asyncio.Future[list[int]]]],
        sha: str,
    ) -> list[Any]:
        if len(batch) == 1:
            keys, args, _ = batch[0]
            try:
                return [await self._redis.evalsha(sha, len(keys), *keys, *args)]
            except NoScriptError as exc:
                return [exc]
        pipe = self._redis.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.evalsha(sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def close(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing
        await self._redis.aclose()


def _decision(raw: list[int], count: int) -> Decision:
    outcomes = []
    for index in range(count):
        admitted, remaining, reset_us, retry_us = raw[1 + index * 4 : 5 + index * 4]
        outcomes.append(Outcome(bool(admitted), int(remaining), reset_us / 1e6, retry_us / 1e6))
    return Decision(bool(raw[0]), tuple(outcomes))
