"""API versions: which version a request asks for, and each version's lifecycle.

Strategies (per API, in ``apis:``):
- ``uri``: the version is in the route paths (``/v1/orders``); an unknown version is
  simply a path no route has: 404.
- ``header``: ``API-Version: 2``; several routes share a path and the version picks
  one. A value that does not parse is 400, a version nobody serves 404, no header the
  API's default.
- ``media_type``: ``Accept: application/vnd.acme.v2+json``; a request that asks only for
  versions nobody serves is 406; one that names none (``*/*``, ``application/json``)
  gets the default.

A deprecated version's responses carry ``Deprecation`` (RFC 9745, ``@<epoch>``),
``Sunset`` (RFC 8594, an HTTP date) and ``Link: <...>; rel="deprecation"``; after its
sunset it is 410 Gone when the config says so.
"""

from __future__ import annotations

import calendar
import datetime
import re
from email.utils import formatdate

from aiohttp import web

from ..config.model import ApiSpec, VersionSpec
from ..context import Clock, Deadline, RequestContext
from ..errors import BadRequest, Gone, NotAcceptable, NotFound
from ..pipeline import CompiledRoute, Handler

_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,40}$")


def _epoch(day: datetime.date) -> int:
    return calendar.timegm(day.timetuple())


class VersionPolicy:
    """Adds a version's lifecycle headers; refuses it (410) after its sunset if asked."""

    __slots__ = ("_clock", "_gone_at", "_headers", "_links")

    def __init__(self, spec: VersionSpec, clock: Clock) -> None:
        self._clock = clock
        headers: list[tuple[str, str]] = []
        if spec.deprecated is not None:
            headers.append(("Deprecation", f"@{_epoch(spec.deprecated)}"))
        if spec.sunset is not None:
            headers.append(("Sunset", formatdate(_epoch(spec.sunset), usegmt=True)))
        self._headers = tuple(headers)
        # Added, not set: the upstream's own links (pagination) stay.
        self._links = (
            (("Link", f'<{spec.link}>; rel="deprecation"'),) if spec.link is not None else ()
        )
        self._gone_at = (
            _epoch(spec.sunset) if spec.sunset is not None and spec.gone_after_sunset else None
        )

    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        ctx.response_headers.extend(self._headers)
        ctx.added_response_headers.extend(self._links)
        if self._gone_at is not None and self._clock.wall() >= self._gone_at:
            raise Gone("this API version has reached its sunset and is no longer served")
        return await call_next(ctx)


class VersionDispatch:
    """One path, several versions (header or media type strategy): pick the version's
    route, which then stands for the request (its kind, its budget)."""

    def __init__(self, api: ApiSpec, routes: dict[str, CompiledRoute]) -> None:
        self._api = api
        self._routes = routes
        prefix = (api.media_type or "").lower() + ".v"
        self._media_prefix = prefix

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        version = self._requested(ctx.request)
        route = self._routes.get(version)
        if route is None:
            if self._api.strategy == "media_type":
                raise NotAcceptable(f"version {version} of this API is not served")
            raise NotFound(f"version {version} of this API is not served")
        ctx.route = route
        # The dispatcher's budget is its longest version's: hold this one to its own.
        own_end = ctx.started + route.budget
        if own_end < ctx.deadline.at:
            ctx.deadline = Deadline(own_end, ctx.deadline.clock)
        return await route.handler(ctx)

    def _requested(self, request: web.BaseRequest) -> str:
        api = self._api
        if api.strategy == "header":
            value = request.headers.get(api.header)
            if value is None:
                return self._default(f"send {api.header}")
            value = value.strip()
            if not _VERSION.match(value):
                raise BadRequest(f"{api.header} must be a version such as 1 or 2, not {value!r}")
            return value
        accept = request.headers.get("Accept", "")
        asked: list[str] = []
        for media_range in accept.split(","):
            media_type = media_range.split(";")[0].strip().lower()
            if media_type.startswith(self._media_prefix) and media_type.endswith("+json"):
                asked.append(media_type[len(self._media_prefix) : -len("+json")])
        if not asked:
            return self._default(f"ask for {api.media_type}.v<N>+json")
        for version in asked:
            if version in self._routes:
                return version
        raise NotAcceptable(
            f"none of the versions asked for ({', '.join(asked)}) is served; served: "
            + ", ".join(f"{api.media_type}.v{v}+json" for v in self._routes)
        )

    def _default(self, hint: str) -> str:
        if self._api.default is None:
            raise BadRequest(f"this API needs a version: {hint}")
        return self._api.default
