"""What the admin API sees of the gateway it runs in.

The admin handlers read the gateway's state when a request comes, not when the admin
app is built: a reload swaps the Runtime (and may start the auth services), and the
admin API must describe the config that serves now.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ..context import Clock
from ..metrics.recorder import RouteRecorders
from ..policies.auth.services import AuthServices
from ..policies.cache.policy import ResponseCache
from ..policies.ratelimit.policy import Limiter
from ..runtime import Runtime


class GatewayView(Protocol):
    @property
    def clock(self) -> Clock: ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def auth(self) -> AuthServices | None: ...

    @property
    def cache(self) -> ResponseCache | None: ...

    @property
    def limiter(self) -> Limiter | None: ...

    @property
    def recorders(self) -> RouteRecorders: ...

    @property
    def reloads_ok(self) -> int: ...

    @property
    def reloads_failed(self) -> int: ...

    @property
    def last_reload_error(self) -> str | None: ...

    @property
    def last_reload_at(self) -> float | None: ...

    async def reload(self) -> bool:
        """Load the config files again; False (and ``last_reload_error``) if refused."""


GATEWAY: web.AppKey[GatewayView] = web.AppKey("gateway")
