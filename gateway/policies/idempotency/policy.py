"""The idempotency policy: the same request with the same key is answered once.

Scope: (consumer, method, route, key). A record holds a fingerprint of the request
(method, path, query and the body — canonical JSON when the body is JSON, so key order
and white space do not matter) and, once answered, the final status, headers and body.

- Same key, same request, answered: the stored response is replayed with
  ``Idempotent-Replayed: true``; the upstream is not called again.
- Same key, still in flight: 409 with ``Retry-After``.
- Same key, a different request: 422.
- Upstream 5xx, timeouts, partial fan-out answers and streamed bodies are not stored:
  the key is released so the client can retry. 4xx answers are stored.
The key header is an RFC 8941 structured-field string: ``Idempotency-Key: "8e03..."``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re

import orjson
from aiohttp import web

from ...bodies import BodyTooLarge, read_bounded
from ...config.model import RouteIdempotencySpec
from ...context import RequestContext
from ...errors import (
    BadRequest,
    Conflict,
    PayloadTooLarge,
    ServiceUnavailable,
    UnprocessableContent,
)
from ...pipeline import Handler
from ...stores.base import StoreError
from .store import IdempotencyStore, StoredResponse

HEADER = "Idempotency-Key"
_SF_STRING = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"$')
_NOT_REPLAYED = frozenset(
    {"x-request-id", "server-timing", "ratelimit", "ratelimit-policy", "content-length", "date"}
)


def parse_key(value: str) -> str | None:
    """The key inside an sf-string, or None when the value is not one (or is empty)."""
    match = _SF_STRING.match(value.strip())
    if match is None or not match.group(1) or len(match.group(1)) > 255:
        return None
    return re.sub(r"\\(.)", r"\1", match.group(1))


class IdempotencyPolicy:
    def __init__(
        self, store: IdempotencyStore, spec: RouteIdempotencySpec, route_name: str, lock_ttl: float
    ) -> None:
        self._store = store
        self._spec = spec
        self._methods = frozenset(spec.methods)
        self._route = route_name
        self._lock_ttl = lock_ttl

    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        request = ctx.request
        if request.method not in self._methods:
            return await call_next(ctx)
        raw_key = request.headers.get(HEADER)
        if raw_key is None:
            if self._spec.required:
                raise BadRequest(f"this route needs an {HEADER} header (a quoted string)")
            return await call_next(ctx)
        key = parse_key(raw_key)
        if key is None:
            raise BadRequest(f'{HEADER} must be a quoted string, e.g. {HEADER}: "8e03978e-40d5"')
        body = ctx.body if ctx.body is not None else await self._read_body(request)
        ctx.body = body
        fingerprint = _fingerprint(request.method, ctx.path, ctx.query, request.content_type, body)
        consumer = ctx.consumer.id if ctx.consumer is not None else "anonymous"
        scoped = f"{consumer}|{request.method}|{self._route}|{key}"
        try:
            begun = await self._store.begin(scoped, fingerprint, self._lock_ttl)
        except StoreError:
            raise ServiceUnavailable(
                "idempotency keys cannot be checked right now", headers={"Retry-After": "1"}
            ) from None
        if begun.fingerprint != fingerprint:
            raise UnprocessableContent(
                f"this {HEADER} was used for a different request: use a new key for a new request"
            )
        if begun.state == "in_flight":
            raise Conflict(
                f"a request with this {HEADER} is still being answered",
                headers={"Retry-After": "1"},
            )
        if begun.state == "done":
            assert begun.response is not None
            return _replay(begun.response)
        try:
            response = await call_next(ctx)
        except BaseException:
            await self._release(scoped, fingerprint)
            raise
        stored = self._storable(response)
        if stored is None:
            await self._release(scoped, fingerprint)
            return response
        try:
            await self._store.finish(scoped, fingerprint, stored, self._spec.ttl)
        except StoreError:
            await self._release(scoped, fingerprint)
        return response

    async def _release(self, scoped: str, fingerprint: str) -> None:
        with contextlib.suppress(StoreError):  # if it fails, the lock expires on its own
            await self._store.abandon(scoped, fingerprint)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self._spec.max_body_size
        try:
            return await read_bounded(request, limit)
        except BodyTooLarge:
            raise PayloadTooLarge(
                f"requests with an {HEADER} on this route are kept for replays: at most "
                f"{limit} bytes"
            ) from None

    def _storable(self, response: web.StreamResponse) -> StoredResponse | None:
        if response.status >= 500 or response.prepared or not isinstance(response, web.Response):
            return None
        if "Gateway-Partial" in response.headers:
            return None
        body = response.body if response.body is not None else b""
        if not isinstance(body, bytes) or len(body) > self._spec.max_body_size:
            return None
        headers = tuple(
            (name, value)
            for name, value in response.headers.items()
            if name.lower() not in _NOT_REPLAYED
        )
        return StoredResponse(response.status, headers, body)


def _fingerprint(method: str, path: str, query: str, content_type: str, body: bytes) -> str:
    canonical = body
    if content_type == "application/json" or content_type.endswith("+json"):
        with contextlib.suppress(orjson.JSONDecodeError):
            canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _replay(stored: StoredResponse) -> web.Response:
    response = web.Response(status=stored.status, body=stored.body)
    for name, value in stored.headers:
        response.headers.add(name, value)
    response.headers["Idempotent-Replayed"] = "true"
    return response
