"""Liveness (``/healthz``) and readiness (``/readyz``).

Liveness says only that the process answers. Readiness is *not ready* (503) while the
gateway shuts down (its listener closed, in-flight requests finishing), and otherwise
pings the stores the gateway was started with and is not ready while a store that the
current routes cannot serve without is down:

- the credential store, when a route authenticates or the token endpoint is on
  (uncached credentials would get 503);
- the rate-limit store on Redis, when a route's ``on_store_down`` is ``fail_closed``
  (``fail_open`` and ``local_fallback`` keep serving);
- the idempotency store on Redis, when a route takes idempotency keys;
- never the cache invalidation bus: it is best effort by design (a node that misses an
  invalidation serves its entry until it expires), so it is reported, not required.

Stores that are down but not required are listed too, so a dashboard sees the
degradation. Probes run only when ``/readyz`` is asked, never on the request path;
each is bounded by a short timeout, they run concurrently, and one result is reused for
a second so that frequent probes cost the stores one ping each per second. Redis stores
are pinged on a connection of their own: a probe that times out must never disturb a
connection that requests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from aiohttp import web

from ..config.model import GatewayConfig
from .http import json_response, problem

if TYPE_CHECKING:
    from ..server import Gateway

log = logging.getLogger("gateway.admin")

#: How long one probe of one store may take before the store counts as down.
PROBE_TIMEOUT = 0.5
#: How long one readiness result is reused.
FRESH_FOR = 1.0
#: An id no consumer has: the credential store probe is one point lookup.
_PROBE_CONSUMER = "gateway-readyz-probe"

Probe = Callable[[], Awaitable[Any]]
Required = Callable[[GatewayConfig], bool]


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    required: bool


@dataclass(frozen=True, slots=True)
class _Dependency:
    name: str
    probe: Probe
    required: Required


def _authenticates(config: GatewayConfig) -> bool:
    return config.auth.oauth.enabled or any(route.auth != "none" for route in config.routes)


def _fails_closed(config: GatewayConfig) -> bool:
    return any(
        route.rate_limit is not None and route.rate_limit.on_store_down == "fail_closed"
        for route in config.routes
    )


def _takes_idempotency_keys(config: GatewayConfig) -> bool:
    return any(route.idempotency is not None for route in config.routes)


def _never(config: GatewayConfig) -> bool:
    return False


class Readiness:
    """The stores of one gateway process and whether the current config needs them."""

    def __init__(self, gateway: Gateway, started_with: GatewayConfig) -> None:
        # Store settings take effect at a restart, so the stores are the ones of the
        # config the process started with; what is *required* follows reloads.
        self._gateway = gateway
        self._clients: dict[str, aioredis.Redis] = {}
        self._redis: list[_Dependency] = []
        if started_with.rate_limits.store == "redis":
            self._add_redis("rate_limit_store", started_with.rate_limits.redis_url, _fails_closed)
        if started_with.idempotency.store == "redis":
            url = started_with.idempotency.redis_url
            self._add_redis("idempotency_store", url, _takes_idempotency_keys)
        if started_with.cache.redis_url is not None:
            self._add_redis("cache_bus", started_with.cache.redis_url, _never)
        self._lock = asyncio.Lock()
        self._last: tuple[float, dict[str, Check]] | None = None
        self._down: set[str] = set()

    def _add_redis(self, name: str, url: str, required: Required) -> None:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = aioredis.from_url(
                url,
                socket_timeout=PROBE_TIMEOUT,
                socket_connect_timeout=PROBE_TIMEOUT,
                single_connection_client=True,
            )
        self._redis.append(_Dependency(name, client.ping, required))

    def _dependencies(self) -> list[_Dependency]:
        dependencies = []
        auth = self._gateway.auth
        if auth is not None:  # started late, by a reload, when a route first authenticates
            store = auth.store
            dependencies.append(
                _Dependency(
                    "credential_store", lambda: store.get_consumer(_PROBE_CONSUMER), _authenticates
                )
            )
        return dependencies + self._redis

    @property
    def draining(self) -> bool:
        return self._gateway.draining

    async def check(self) -> dict[str, Check]:
        clock = self._gateway.clock
        async with self._lock:
            if self._last is not None and clock.monotonic() - self._last[0] < FRESH_FOR:
                return self._last[1]
            config = self._gateway.runtime.config
            dependencies = self._dependencies()
            results = await asyncio.gather(*(self._ping(d.name, d.probe) for d in dependencies))
            checks = {
                d.name: Check(ok, d.required(config))
                for d, ok in zip(dependencies, results, strict=True)
            }
            self._last = (clock.monotonic(), checks)
            return checks

    async def _ping(self, name: str, probe: Probe) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await probe()
        except Exception as exc:
            # Logged when the state changes, not at every probe: an outage seen by a
            # probe every second would otherwise flood the log.
            if name not in self._down:
                self._down.add(name)
                log.warning("readiness: %s is down (%s)", name, type(exc).__name__)
            return False
        if name in self._down:
            self._down.discard(name)
            log.warning("readiness: %s is back", name)
        return True

    async def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()


READINESS: web.AppKey[Readiness] = web.AppKey("readiness")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    if readiness.draining:
        # Load balancers must stop sending: the listener is closed already, and what
        # is in flight is finishing.
        return problem(
            503,
            "Not ready",
            "the gateway is shutting down: in-flight requests are finishing",
            headers={"Retry-After": "1"},
            extra={"ready": False, "draining": True},
        )
    checks = await readiness.check()
    body = {name: {"ok": check.ok, "required": check.required} for name, check in checks.items()}
    down = sorted(name for name, check in checks.items() if check.required and not check.ok)
    if down:
        return problem(
            503,
            "Not ready",
            "required stores are down: " + ", ".join(down),
            headers={"Retry-After": "1"},
            extra={"ready": False, "checks": body},
        )
    return json_response({"ready": True, "checks": body})
