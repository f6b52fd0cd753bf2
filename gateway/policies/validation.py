"""Request validation at the edge: content type, size, JSON, JSON Schema.

Schemas are compiled once when the config loads (``schemas.compile_schema``): a valid
body costs one call into compiled code. Only when a body fails is it walked again, to
list *every* violation with its JSON Pointer, since a client fixing one error at a time
would need as many round trips.

    400  the body is not JSON (or not UTF-8)
    413  the body is over ``max_body_size``
    415  a Content-Type the route does not accept
    422  parses, but breaks the schema: ``violations: [{pointer, message}, ...]``
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..bodies import BodyTooLarge, read_bounded
from ..config.model import ValidationSpec
from ..context import RequestContext
from ..errors import BadRequest, PayloadTooLarge, UnprocessableContent, UnsupportedMediaType
from ..pipeline import Handler
from .schemas import CompiledSchema, compile_schema

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class ValidationPolicy:
    __slots__ = ("_body", "_max", "_query", "_types")

    def __init__(self, spec: ValidationSpec) -> None:
        self._body = compile_schema(spec.body) if spec.body is not None else None
        self._query = compile_schema(spec.query) if spec.query is not None else None
        self._types = frozenset(content_type.lower() for content_type in spec.content_types)
        self._max = spec.max_body_size

    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        request = ctx.request
        if self._query is not None:
            query: dict[str, Any] = {}
            for name in request.query:
                values = request.query.getall(name)
                query[name] = values[0] if len(values) == 1 else values
            _check(self._query, query, "query")
        if self._body is not None and request.method in _WITH_BODY:
            ctx.body = await self._read_json(request, ctx)
        return await call_next(ctx)

    async def _read_json(self, request: web.BaseRequest, ctx: RequestContext) -> bytes:
        content_type = request.content_type.lower()
        if content_type not in self._types:
            accepted = ", ".join(sorted(self._types))
            raise UnsupportedMediaType(
                f"this route takes {accepted}, not {content_type or 'no type'}"
            )
        try:
            raw = await read_bounded(request, self._max)
        except BodyTooLarge:
            raise PayloadTooLarge(f"the body is over {self._max} bytes") from None
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        assert self._body is not None
        _check(self._body, document, "body")
        return raw


def _check(schema: CompiledSchema, document: Any, where: str) -> None:
    if schema.is_valid(document):
        return
    errors = sorted(schema.iter_errors(document), key=lambda e: [str(p) for p in e.instance_path])
    violations = [
        {
            "pointer": "/" + "/".join(_escape(part) for part in error.instance_path)
            if error.instance_path
            else "",
            "message": error.message,
        }
        for error in errors
    ]
    raise UnprocessableContent(
        f"the {where} breaks the route's schema ({len(violations)} violation(s))",
        extra={"where": where, "violations": violations},
    )


def _escape(part: object) -> str:
    """RFC 6901: '~' and '/' inside a member name."""
    return str(part).replace("~", "~0").replace("/", "~1")


__all__ = ["ValidationPolicy", "compile_schema"]
