"""Where rate-limit state lives: this process (``memory``) or Redis (every node).

Both answer ``decide(keys, limits, cost)`` with one atomic decision. The memory store
needs no lock: it has no ``await`` between reading and writing state. The Redis store
runs ``limiter.lua`` (loaded once, called by SHA): one round trip per decision, the
server's clock, expiry set in the same script.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Protocol

from ...context import Clock
from .arithmetic import EPSILON, Decision, Limit, Outcome, State, decide, expiry
from .wire import RedisTarget, RedisWire, bulk_strings


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
        return self.decide_now(keys, limits, cost)

    def decide_now(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        """``decide`` without the coroutine: the memory store never waits."""
        now = self._clock.wall()
        stored = self._states
        if len(keys) == 1:
            key = keys[0]
            entry = stored.get(key)
            states: Sequence[State] = (
                (entry[0],) if entry is not None and entry[1] > now else (None,)
            )
        else:
            states = [
                entry[0] if (entry := stored.get(key)) is not None and entry[1] > now else None
                for key in keys
            ]
        decision, new_states = decide(limits, states, cost, now)
        if decision.admitted:
            for key, limit, state in zip(keys, limits, new_states, strict=True):
                stored[key] = (state, now + expiry(limit, state, now))
            self._writes += 1
            if self._writes >= self._sweep_every:
                self._sweep(now)
        return decision

    def decide_rate_now(self, key: str, limit: Limit, cost: int) -> tuple[bool, int, float, float]:
        """One rate limit's decision on the policy's path for the common configuration:
        ``(admitted, remaining, reset, retry_after)``, the fields of its ``Outcome``.

        The GCRA step of ``arithmetic._rate``, inlined and without the objects around
        it: this runs for every request of a limited route, and the general path cost
        twice as much. A store test holds the two paths to the same answers.
        """
        now = self._clock.wall()
        states = self._states
        entry = states.get(key)
        # A rate state is meaningful until its TAT, so it is stored as (TAT, TAT), as
        # the general path stores it: the second is the TAT, typed as a float. An
        # expired one reads as now.
        tat = entry[1] if entry is not None and entry[1] > now else now
        interval = limit.interval
        new_tat = tat + cost * interval
        allow_at = new_tat - limit.burst_time
        # ``int(x) if x > 0 else 0`` is ``max(0, math.floor(x))`` with no calls.
        if now < allow_at - EPSILON:
            left = (now - (tat - limit.burst_time)) / interval + EPSILON
            return False, int(left) if left > 0 else 0, tat - now, allow_at - now
        states[key] = (new_tat, new_tat)
        self._writes += 1
        if self._writes >= self._sweep_every:
            self._sweep(now)
        left = (now - allow_at) / interval + EPSILON
        return True, int(left) if left > 0 else 0, new_tat - now, 0.0

    def _sweep(self, now: float) -> None:
        self._writes = 0
        for key in [key for key, (_, until) in self._states.items() if until <= now]:
            del self._states[key]

    def __len__(self) -> int:
        return len(self._states)

    async def close(self) -> None:
        self._states.clear()


_SCRIPT = resources.files(__package__).joinpath("limiter.lua").read_text()
#: ``EVALSHA`` names the script by this digest: known without asking the server.
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode(), usedforsecurity=False).hexdigest()

_MAX_ENCODED_LIMIT_SETS = 1024


class RedisLimiterStore:
    """Decisions on Redis: pre-encoded commands on one pipelined connection (``wire``).

    The command bytes are built here rather than by a client library's command packer,
    whose per-command cost was most of a decision's: everything but the keys (the
    script's digest, the limits' parameters, the cost) is encoded once per limit set
    and reused. Each decision fails with ``StoreError`` at ``timeout`` after it was
    asked (see ``RedisWire``).
    """

    def __init__(self, wire: RedisWire) -> None:
        self._wire = wire
        #: ``send(command)``: the reply to a command of ``command()``, to be awaited (a
        #: future, not a coroutine: the request awaits it with no frame of ours between).
        #: The reply is ``decision_of``'s ``raw``. Fails with ``StoreError``.
        self.send: Callable[[bytes], Awaitable[list[int]]] = wire.send
        self._sha = _SCRIPT_SHA
        #: id(limits) -> (limits, the encoded arguments after the keys and the cost).
        #: Limit sets are made at config load; the bound only matters across reloads.
        self._encoded_limits: dict[int, tuple[Sequence[Limit], bytes]] = {}
        self._heads: dict[int, bytes] = {}
        self._costs: dict[int, bytes] = {}

    @classmethod
    def from_url(cls, url: str, timeout: float) -> RedisLimiterStore:
        return cls(RedisWire(RedisTarget(url), timeout, _SCRIPT))

    async def warm_up(self, within: float) -> None:
        """Connect and load the script before the first request needs them.

        Otherwise the first decisions pay for the connection and a ``NOSCRIPT`` retry
        inside their ``timeout`` slice, and on a slow start they fall to the route's
        ``on_store_down``. Raises ``StoreError`` when Redis cannot be reached in time.
        """
        await self._wire.warm_up(within)

    async def decide(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> Decision:
        # The policy makes each subject's command once and asks ``send`` itself.
        return decision_of(await self.send(self.command(keys, limits, cost)), len(limits))

    def command(self, keys: Sequence[str], limits: Sequence[Limit], cost: int) -> bytes:
        """``EVALSHA sha n key... cost limit-args...`` in RESP, encoded."""
        encoded = self._encoded_limits.get(id(limits))
        if encoded is None or encoded[0] is not limits:
            if len(self._encoded_limits) >= _MAX_ENCODED_LIMIT_SETS:
                self._encoded_limits.clear()  # old reloads' limit sets; rebuilt on demand
            encoded = (limits, bulk_strings(_limit_args(limits)))
            self._encoded_limits[id(limits)] = encoded
        head = self._heads.get(len(keys))
        if head is None:
            count = 3 + len(keys) + 1 + 4 * len(limits)
            head = b"*%d\r\n$7\r\nEVALSHA\r\n" % count + bulk_strings([self._sha, len(keys)])
            self._heads[len(keys)] = head
        cost_bytes = self._costs.get(cost)
        if cost_bytes is None:
            cost_bytes = self._costs[cost] = bulk_strings([cost])
        parts = [head]
        for key in keys:
            # A subject taken from a request header may hold bytes that are not UTF-8
            # (aiohttp keeps them as surrogates): they go to Redis as they came.
            raw = key.encode("utf-8", "surrogateescape")
            parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
        parts.append(cost_bytes)
        parts.append(encoded[1])
        return b"".join(parts)

    async def close(self) -> None:
        await self._wire.close()


def _limit_args(limits: Sequence[Limit]) -> list[float | int]:
    args: list[float | int] = []
    for limit in limits:
        args += [1 if limit.kind == "rate" else 2, limit.amount, limit.burst, limit.period]
    return args


def decision_of(raw: list[int], count: int) -> Decision:
    """The script's reply as a ``Decision``: ``[admitted, then per limit admitted,
    remaining, reset in µs, retry-after in µs]``."""
    outcomes = []
    for index in range(count):
        admitted, remaining, reset_us, retry_us = raw[1 + index * 4 : 5 + index * 4]
        outcomes.append(Outcome(bool(admitted), int(remaining), reset_us / 1e6, retry_us / 1e6))
    return Decision(bool(raw[0]), tuple(outcomes))
