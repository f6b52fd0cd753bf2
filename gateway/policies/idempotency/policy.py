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
import struct

import orjson
from aiohttp import web
from aiohttp.helpers import parse_content_type
from multidict import CIMultiDict, istr

from ...bodies import BodyTooLarge, read_arrived, read_bounded
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
# Header names as ``istr``: multidict folds their case once, not on every look-up.
_KEY_HEADER = istr(HEADER)
_CONTENT_TYPE = istr("Content-Type")
_PARTIAL = istr("Gateway-Partial")
_SF_STRING = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"$')
#: The usual key: quoted, nothing to unescape, no white space around it. Matched whole,
#: it is the key as it is, without the strip and unescaping of the general case.
_SF_PLAIN = re.compile(r'"([\x20\x21\x23-\x5b\x5d-\x7e]{1,255})"')
_ESCAPED = re.compile(r"\\(.)")
#: Per-request headers, never replayed. A case-insensitive multidict used as a set: the
#: test is then one C-level look-up per header (``istr`` names carry their folded
#: form), not a ``lower()`` and a set look-up.
_NOT_REPLAYED: CIMultiDict[str] = CIMultiDict(
    (name, "")
    for name in (
        "X-Request-Id",
        "Server-Timing",
        "RateLimit",
        "RateLimit-Policy",
        "Content-Length",
        "Date",
    )
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
            self._local.prepare(spec.ttl)
        # The spec's settings read once here, not through the spec on every request.
        self._required = spec.required
        self._max_body_size = spec.max_body_size
        self._ttl = spec.ttl
        self._lock_ttl = lock_ttl
        # The constant middle of the scoped key ("consumer|method|route|key"), per method
        # the route takes keys on: also the check that the method takes them.
        self._scopes: dict[str, str] = {
            method: f"|{method}|{route_name}|" for method in spec.methods
        }
        # The method as the fingerprint frames it, made once.
        self._method_parts: dict[str, bytes] = {
            method: _length_prefixed(method.encode()) for method in spec.methods
        }

    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        request = ctx.request
        method = request.method
        scope = self._scopes.get(method)
        if scope is None:
            return await call_next(ctx)
        raw_key = request.headers.get(_KEY_HEADER)
        if raw_key is None:
            if self._required:
                raise BadRequest(f"this route needs an {HEADER} header (a quoted string)")
            return await call_next(ctx)
        key = parse_key(raw_key)
        if key is None:
            raise BadRequest(f'{HEADER} must be a quoted string, e.g. {HEADER}: "8e03978e-40d5"')
        body = ctx.body
        if body is None:
            try:
                body = read_arrived(request, self._max_body_size)
                if body is None:
                    body = await read_bounded(request, self._max_body_size)
                ctx.body = body
            except BodyTooLarge:
                raise PayloadTooLarge(
                    f"requests with an {HEADER} on this route are kept for replays: at most "
                    f"{self._max_body_size} bytes"
                ) from None
        is_json = _is_json(request.headers.get(_CONTENT_TYPE))
        fingerprint = _fingerprint(self._method_parts[method], ctx.path, ctx.query, is_json, body)
        consumer = ctx.consumer
        scoped = f"{consumer.id if consumer is not None else 'anonymous'}{scope}{key}"
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
        # None: the memory store took the key for this request (its usual answer).
        if begun is not None and begun.state != "new":
            if begun.fingerprint != fingerprint:
                raise UnprocessableContent(
                    f"this {HEADER} was used for a different request: use a new key for a "
                    "new request"
                )
            if begun.state == "in_flight":
                raise Conflict(
                    f"a request with this {HEADER} is still being answered",
                    headers={"Retry-After": "1"},
                )
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

    def _storable(self, response: web.StreamResponse) -> StoredResponse | None:
        if response.status >= 500 or response.prepared or not isinstance(response, web.Response):
            return None
        headers = response.headers
        if _PARTIAL in headers:
            return None
        body = response.body
        if body is None:
            body = b""
        elif not isinstance(body, bytes) or len(body) > self._max_body_size:
            return None
        # str(name): plain strings, not multidict's ``istr``, so the memory store packs
        # them as they are. A loop, not a comprehension: one frame less per request.
        kept = []
        for name, value in headers.items():
            if name not in _NOT_REPLAYED:
                kept.append((str(name), value))
        return StoredResponse(response.status, tuple(kept), body)


def _is_json(content_type: str | None) -> bool:
    """Whether a body of this Content-Type is JSON, by aiohttp's reading of the header
    (``request.content_type``), remembered per raw value: clients send few distinct
    ones, and a dict look-up costs less than aiohttp parsing the header per request."""
    known = _JSON_TYPES.get(content_type)
    if known is None:
        media = "application/octet-stream"  # aiohttp's for a request without one
        if content_type is not None:
            media = parse_content_type(content_type)[0]
        known = media == "application/json" or media.endswith("+json")
        if len(_JSON_TYPES) >= _JSON_TYPES_MAX:
            _JSON_TYPES.clear()  # a client making up values: start over, stay bounded
        _JSON_TYPES[content_type] = known
    return known


_JSON_TYPES: dict[str | None, bool] = {}
_JSON_TYPES_MAX = 256


def _fingerprint(method_part: bytes, path: str, query: str, is_json: bool, body: bytes) -> str:
    """SHA-256 over the method, path, query and body, each behind its length so no two
    different requests hash the same bytes. ``method_part`` is the method's, made once
    per route (``_length_prefixed``). One ``sha256`` call over the joined parts gives the
    digest that one update per part did, with fewer calls on every request."""
    canonical = body
    if is_json:
        # try/except rather than contextlib.suppress: this runs on every request, and
        # the context manager's Python-level __exit__ cost as much as the hashing.
        try:  # noqa: SIM105
            canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
        except orjson.JSONDecodeError:
            pass  # not JSON after all: its bytes as they are
    path_bytes = path.encode()
    query_part = _length_prefixed(query.encode()) if query else _NO_QUERY
    return hashlib.sha256(
        b"".join(
            (
                method_part,
                _LENGTH(len(path_bytes)),
                path_bytes,
                query_part,
                _LENGTH(len(canonical)),
                canonical,
            )
        )
    ).hexdigest()


def _length_prefixed(part: bytes) -> bytes:
    return _LENGTH(len(part)) + part


#: A part's length as the fingerprint frames it: 8 bytes, big-endian.
_LENGTH = struct.Struct(">Q").pack
_NO_QUERY = _LENGTH(0)


def _replay(stored: StoredResponse) -> web.Response:
    response = web.Response(status=stored.status, body=stored.body)
    for name, value in stored.headers:
        response.headers.add(name, value)
    response.headers["Idempotent-Replayed"] = "true"
    return response
