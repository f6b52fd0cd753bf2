"""The conditional-request policy: ETags, 304 Not Modified, and If-Match on writes.

GET/HEAD: a 200 whose body the gateway holds (buffered proxy bodies, fan-out answers)
gets a strong ETag if it has none (not a partial fan-out answer: that must never
validate as the full one); then ``If-None-Match`` (or ``If-Modified-Since``) is
evaluated and a match becomes a 304 with the headers a 304 carries and no body.
Streamed bodies keep the upstream's own validators, and the client's conditional
headers reach the upstream, which can answer 304 itself.

Writes (``require_if_match``): no ``If-Match`` is 428; otherwise the current
representation is fetched from the upstream and the write goes ahead only when its
ETag matches (strong comparison), else 412. The ``If-Match`` header is passed on too,
so an upstream that checks it closes the gap between that fetch and the write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ..config.model import ConditionalSpec
from ..context import RequestContext
from ..errors import PreconditionFailed, PreconditionRequired
from ..pipeline import Handler
from .conditional_spec import (
    NOT_MODIFIED_HEADERS,
    match,
    none_match,
    not_modified_since,
    strong_etag,
)

CurrentEtag = Callable[[RequestContext], Awaitable[str | None]]
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


class ConditionalPolicy:
    __slots__ = ("_current", "_spec")

    def __init__(self, spec: ConditionalSpec, current_etag: CurrentEtag | None) -> None:
        self._spec = spec
        self._current = current_etag

    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        request = ctx.request
        method = request.method
        if method not in _SAFE:
            if self._spec.require_if_match and self._current is not None:
                await self._check_if_match(ctx)
            return await call_next(ctx)
        response = await call_next(ctx)
        if (
            response.prepared
            or response.status != 200
            or not isinstance(response, web.Response)
            or "Gateway-Partial" in response.headers
        ):
            return response
        headers = response.headers
        etag = headers.get("ETag")
        if etag is None and self._spec.etag and method == "GET" and response.body is not None:
            body = response.body
            if isinstance(body, bytes):
                etag = headers["ETag"] = strong_etag(body)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None:
            # `*` holds for any current representation, validator or not (a HEAD).
            fresh = if_none_match.strip() == "*" or none_match(if_none_match, etag)
        else:
            since = request.headers.get("If-Modified-Since")
            fresh = since is not None and not_modified_since(since, headers.get("Last-Modified"))
        if not fresh:
            return response
        not_modified = web.Response(status=304)
        for name in NOT_MODIFIED_HEADERS:
            value = headers.get(name)
            if value is not None:
                not_modified.headers[name] = value
        return not_modified

    async def _check_if_match(self, ctx: RequestContext) -> None:
        if_match = ctx.request.headers.get("If-Match")
        if if_match is None:
            raise PreconditionRequired(
                "this route takes writes only with If-Match: fetch the resource, then send its ETag"
            )
        assert self._current is not None
        current = await self._current(ctx)
        if not match(if_match, current):
            raise PreconditionFailed(
                "If-Match does not name the current representation: it changed since "
                "you fetched it (or does not exist)"
            )
