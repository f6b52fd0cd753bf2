"""Upstream pools: one ``ClientSession`` per upstream, round-robin targets, passive health.

Rules:
- A pool owns one session (one bounded connection pool with keep-alive) for all of its
  targets. Sessions outlive config reloads when the upstream's settings did not change,
  so a reload does not throw away warm connections.
- Passive health: a target whose requests fail ``max_failures`` times in a row (connect
  errors, resets, timeouts) is skipped for ``cooldown``. When every target is cooling
  down, the one that will recover first is tried rather than failing the request: a
  guess beats a certain 503.
- aiohttp's exceptions never leave this package: ``client_error`` turns them into the
  gateway's ``UpstreamError`` (502) and ``UpstreamTimeout`` (504).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import hdrs
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict
from yarl import URL

from ..config.model import HealthSpec, PoolSpec
from ..context import Clock
from ..errors import GatewayError, UpstreamError, UpstreamTimeout

#: The headers of the request ``UpstreamPool.send`` is making on this task, handed
#: straight to ``_PassThroughRequest``: passed to the session instead, they would be
#: copied into a new dict one header at a time in Python (``_prepare_headers``, about
#: 15 bytecode instructions a header) before the request copied them again.
_HANDED_HEADERS: ContextVar[CIMultiDict[str] | None] = ContextVar(
    "gateway_upstream_headers", default=None
)


class _PassThroughRequest(aiohttp.ClientRequest):
    """A client request that sends the headers it is given and none of aiohttp's own.

    A proxy must not add ``Accept-Encoding`` (the upstream could then compress for a
    client that never asked) nor ``User-Agent``/``Accept``, nor a ``Content-Type`` for a
    body that had none. aiohttp's ``skip_auto_headers`` does the same, but rebuilds two
    header dicts per request to do it.
    """

    def update_auto_headers(self, skip_auto_headers: object) -> None:
        self._skip_auto_headers = _NEVER_ADDED

    def update_headers(self, headers: LooseHeaders | None) -> None:
        handed = _HANDED_HEADERS.get()
        if handed is not None:
            headers = handed
        # Copied in one C call, not aiohttp's add-one-header-at-a-time loop; a copy,
        # since the caller may send the same headers again to another target.
        self.headers = CIMultiDict(headers) if headers else CIMultiDict()
        if hdrs.HOST not in self.headers:
            host = self.url.host_port_subcomponent
            assert host is not None  # always an absolute URL here
            self.headers[hdrs.HOST] = host


_NEVER_ADDED: CIMultiDict[None] = CIMultiDict({"Content-Type": None})


class Target:
    __slots__ = ("cooling_until", "failures", "host", "origin", "url")

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.url = URL(origin)
        #: The ``Host`` header for this target, as aiohttp would write it (the port only
        #: when it is not the scheme's default): worked out once, not per request.
        host = self.url.host_port_subcomponent
        assert host is not None  # config validation requires an absolute URL
        self.host = host
        self.failures = 0
        self.cooling_until = 0.0


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Two upstreams with equal keys can share one pool, across reloads too."""

    name: str
    targets: tuple[str, ...]
    pool: PoolSpec
    health: HealthSpec


class UpstreamPool:
    __slots__ = ("_clock", "_next", "health", "key", "name", "session", "targets")

    def __init__(self, key: PoolKey, clock: Clock) -> None:
        self.key = key
        self.name = key.name
        self.health = key.health
        self.targets = [Target(origin) for origin in key.targets]
        self._next = 0
        self._clock = clock
        connector = aiohttp.TCPConnector(
            limit=key.pool.max_connections,
            limit_per_host=0,
            keepalive_timeout=key.pool.keepalive,
            ttl_dns_cache=60,
            enable_cleanup_closed=False,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            # A proxy passes bodies and headers through as they are: no decompression,
            # no headers of aiohttp's own (see _PassThroughRequest), and never a cookie
            # jar, which would carry one client's cookies into another client's requests.
            auto_decompress=False,
            request_class=_PassThroughRequest,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=key.pool.connect_timeout),
        )

    async def send(
        self, method: str, url: URL, headers: CIMultiDict[str], **options: Any
    ) -> aiohttp.ClientResponse:
        """``session.request(method, url, headers=headers, **options)``, its headers
        handed to the request past the session's per-header copy (``_HANDED_HEADERS``).

        The caller releases the response."""
        token = _HANDED_HEADERS.set(headers)
        try:
            return await self.session.request(method, url, **options)
        finally:
            _HANDED_HEADERS.reset(token)

    def pick(self) -> Target:
        targets = self.targets
        if len(targets) == 1:
            return targets[0]
        now = self._clock.monotonic()
        for _ in range(len(targets)):
            target = targets[self._next]
            self._next = (self._next + 1) % len(targets)
            if target.cooling_until <= now:
                return target
        return min(targets, key=lambda t: t.cooling_until)

    def next_after(self, tried: Target) -> Target | None:
        """Another healthy target to retry a request that never reached ``tried``."""
        now = self._clock.monotonic()
        for target in self.targets:
            if target is not tried and target.cooling_until <= now:
                return target
        return None

    def report_success(self, target: Target) -> None:
        if target.failures:
            target.failures = 0

    def report_failure(self, target: Target) -> None:
        target.failures += 1
        if target.failures >= self.health.max_failures:
            target.cooling_until = self._clock.monotonic() + self.health.cooldown
            target.failures = 0

    async def close(self) -> None:
        await self.session.close()


class PoolRegistry:
    """Hands out pools by key and closes the ones no runtime uses any more."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._pools: dict[PoolKey, UpstreamPool] = {}
        self._users: dict[PoolKey, int] = {}

    def acquire(self, key: PoolKey) -> UpstreamPool:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = UpstreamPool(key, self._clock)
        self._users[key] = self._users.get(key, 0) + 1
        return pool

    async def release(self, keys: list[PoolKey]) -> None:
        for key in keys:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                await self._pools.pop(key).close()

    async def close(self) -> None:
        pools = list(self._pools.values())
        self._pools.clear()
        self._users.clear()
        for pool in pools:
            await pool.close()


class ConnectFailed(UpstreamError):
    """The request never reached the target, so it is safe to try another one."""


#: What a call to an upstream may raise; ``client_error`` translates each of them.
CLIENT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


def client_error(exc: BaseException, upstream: str) -> GatewayError:
    """The gateway error for an aiohttp (or socket) failure talking to ``upstream``.

    Used as ``except CLIENT_ERRORS as exc: raise client_error(exc, name) from exc``: a
    plain ``except`` costs nothing on the happy path, unlike a context manager.
    """
    if isinstance(exc, TimeoutError):  # includes aiohttp's ServerTimeoutError
        return UpstreamTimeout(f"upstream {upstream!r} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectFailed(f"cannot connect to upstream {upstream!r}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(f"upstream {upstream!r} closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(f"upstream {upstream!r} sent a broken body")
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamError(f"upstream {upstream!r} broke the HTTP protocol")
    return UpstreamError(f"upstream {upstream!r} failed: {type(exc).__name__}")
