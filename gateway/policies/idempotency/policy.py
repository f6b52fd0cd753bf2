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
from .store import IdempotencyStore, MemoryIdempotencyStore, StoredResponse

HEADER = "Idempotency-Key"
_SF_STRING = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"$')
#: The usual key: quoted, nothing to unescape, no white space around it. Matched whole,
#: it is the key as it is, without the strip and unescaping of the general case.
_SF_PLAIN = re.compile(r'"([\x20\x21\x23-\x5b\x5d-\x7e]{1,255})"')
_ESCAPED = re.compile(r"\\(.)")
_NOT_REPLAYED = frozenset(
    {"x-request-id", "server-timing", "ratelimit", "ratelimit-policy", "content-length", "date"}
)


def parse_key(value: str) -> str | None:
    """The key inside an sf-string, or None when the value is not one (or is empty)."""
    plain = _SF_PLAIN.fullmatch(value)
    if plain is not None:
        return plain.group(1)
    match = _SF_STRING.match(value.strip())
    if match is None:
        return None
    inner = match.group(1)
    if not inner or len(inner) > 255:
        return None
    return _ESCAPED.sub(r"\1", inner)


class IdempotencyPolicy:
    def __init__(
        self, store: IdempotencyStore, spec: RouteIdempotencySpec, route_name: str, lock_ttl: float
    ) -> None:
        self._store = store
        # The memory store answers without a coroutine: called directly, it saves
        # creating and awaiting one per store call.
        self._local = store if isinstance(store, MemoryIdempotencyStore) else None
        if self._local is not None:
            self._local.prepare(lock_ttl)
            self._local.prepare(spec.ttl)
        self._spec = spec
        self._required = spec.required
        self._max_body_size = spec.max_body_size
        self._ttl = spec.ttl
        self._route = route_name
        self._lock_ttl = lock_ttl
        # The constant middle of the scoped key ("consumer|method|route|key"), per method
        # the route takes keys on: also the check that the method takes them.
        self._scopes: dict[str, str] = {
            method: f"|{method}|{route_name}|" for method in spec.methods
        }

    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        request = ctx.request
        method = request.method
        scope = self._scopes.get(method)
        if scope is None:
            return await call_next(ctx)
        raw_key = request.headers.get(HEADER)
        if raw_key is None:
            if self._required:
                raise BadRequest(f"this route needs an {HEADER} header (a quoted string)")
            return await call_next(ctx)
        key = parse_key(raw_key)
        if key is None:
            raise BadRequest(f'{HEADER} must be a quoted string, e.g. {HEADER}: "8e03978e-40d5"')
        body = ctx.body
        if body is None:
            body = ctx.body = await self._read_body(request)
        fingerprint = _fingerprint(method, ctx.path, ctx.query, request.content_type, body)
        consumer = ctx.consumer
        scoped = (consumer.id if consumer is not None else "anonymous") + scope + key
        local = self._local
        if local is not None:
            begun = local.begin_now(scoped, fingerprint, self._lock_ttl)
        else:
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
        state = begun.state
        if state == "in_flight":
            raise Conflict(
                f"a request with this {HEADER} is still being answered",
                headers={"Retry-After": "1"},
            )
        if state == "done":
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
        elif local is not None:
            local.finish_now(scoped, fingerprint, stored, self._ttl)
        else:
            try:
                await self._store.finish(scoped, fingerprint, stored, self._ttl)
            except StoreError:
                await self._release(scoped, fingerprint)
        return response

    async def _release(self, scoped: str, fingerprint: str) -> None:
        if self._local is not None:
            self._local.abandon_now(scoped, fingerprint)
            return
        with contextlib.suppress(StoreError):  # if it fails, the lock expires on its own
            await self._store.abandon(scoped, fingerprint)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self._max_body_size
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
        headers = response.headers
        if "Gateway-Partial" in headers:
            return None
        body = response.body
        if body is None:
            body = b""
        elif not isinstance(body, bytes) or len(body) > self._max_body_size:
            return None
        # str(name): plain strings, not multidict's ``istr``, so the memory store packs
        # them as they are.
        kept = tuple(
            [
                (str(name), value)
                for name, value in headers.items()
                if name.lower() not in _NOT_REPLAYED
            ]
        )
        return StoredResponse(response.status, kept, body)


def _fingerprint(method: str, path: str, query: str, content_type: str, body: bytes) -> str:
    canonical = body
    if content_type == "application/json" or content_type.endswith("+json"):
        # try/except rather than contextlib.suppress: this runs on every request, and
        # the context manager's Python-level __exit__ cost as much as the hashing.
        try:  # noqa: SIM105
            canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
        except orjson.JSONDecodeError:
            pass  # not JSON after all: its bytes as they are
    method_bytes, path_bytes, query_bytes = method.encode(), path.encode(), query.encode()
    # Each part behind its length, so no two different requests hash the same bytes;
    # hashed in one call, which gives the digest that one update per part did.
    return hashlib.sha256(
        b"".join(
            (
                len(method_bytes).to_bytes(8, "big"),
                method_bytes,
                len(path_bytes).to_bytes(8, "big"),
                path_bytes,
                len(query_bytes).to_bytes(8, "big"),
                query_bytes,
                len(canonical).to_bytes(8, "big"),
                canonical,
            )
        )
    ).hexdigest()


def _replay(stored: StoredResponse) -> web.Response:
    response = web.Response(status=stored.status, body=stored.body)
    for name, value in stored.headers:
        response.headers.add(name, value)
    response.headers["Idempotent-Replayed"] = "true"
    return response
