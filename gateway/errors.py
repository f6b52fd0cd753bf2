"""Errors the gateway answers with, as RFC 9457 ``application/problem+json``.

    GatewayError                     (abstract: carries status, title, slug, headers)
     +-- BadRequest                  400 the request cannot be parsed or is unsafe
     +-- Unauthorized                401 no or bad credentials (``WWW-Authenticate``)
     +-- Forbidden                   403 authenticated, not allowed (``WWW-Authenticate``)
     +-- NotFound                    404 no route for this path
     +-- MethodNotAllowed            405 a route has the path, not the method (``Allow``)
     +-- PreconditionFailed          412 If-Match does not hold
     +-- PayloadTooLarge             413
     +-- NotAcceptable               406 a media type (API version) nobody serves
     +-- Conflict                    409 the same idempotency key is in flight
     +-- Gone                        410 an API version past its sunset
     +-- UnsupportedMediaType        415 a Content-Type the route does not accept
     +-- UnprocessableContent        422 parses, but breaks the route's schema
     +-- PreconditionRequired        428 the route requires If-Match on writes
     +-- TooManyRequests             429 rate limited (``Retry-After``)
     +-- HeadersTooLarge             431
     +-- UpstreamError               502 an upstream refused, reset or broke the protocol
     +-- ServiceUnavailable          503 no healthy target, or the gateway is draining
     +-- UpstreamTimeout             504 the deadline ran out before a required upstream

Each class carries what the responder needs; ``problem_response`` is the only place a
problem body is built, so every error has the same shape and the request id.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson
from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"


class GatewayError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal gateway error"
    slug: ClassVar[str] = "internal"

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if type(self) is GatewayError:
            raise TypeError("GatewayError is abstract: raise one of its subclasses")
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


class BadRequest(GatewayError):
    status = 400
    title = "Bad request"
    slug = "bad-request"


class Unauthorized(GatewayError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str, *, challenge: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(GatewayError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"

    def __init__(self, detail: str, *, challenge: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": challenge} if challenge else None)


class NotFound(GatewayError):
    status = 404
    title = "Not found"
    slug = "not-found"


class MethodNotAllowed(GatewayError):
    status = 405
    title = "Method not allowed"
    slug = "method-not-allowed"

    def __init__(self, detail: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(detail, headers={"Allow": ", ".join(allow)})


class NotAcceptable(GatewayError):
    status = 406
    title = "Not acceptable"
    slug = "not-acceptable"


class Conflict(GatewayError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class Gone(GatewayError):
    status = 410
    title = "Gone"
    slug = "gone"


class PreconditionFailed(GatewayError):
    status = 412
    title = "Precondition failed"
    slug = "precondition-failed"


class UnsupportedMediaType(GatewayError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class UnprocessableContent(GatewayError):
    status = 422
    title = "Unprocessable content"
    slug = "validation-failed"


class PreconditionRequired(GatewayError):
    status = 428
    title = "Precondition required"
    slug = "precondition-required"


class PayloadTooLarge(GatewayError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class TooManyRequests(GatewayError):
    status = 429
    title = "Too many requests"
    slug = "rate-limited"


class HeadersTooLarge(GatewayError):
    status = 431
    title = "Request header fields too large"
    slug = "headers-too-large"


class UpstreamError(GatewayError):
    status = 502
    title = "Bad gateway"
    slug = "upstream-error"


class ServiceUnavailable(GatewayError):
    status = 503
    title = "Service unavailable"
    slug = "unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    title = "Gateway timeout"
    slug = "upstream-timeout"


def problem_body(
    status: int,
    title: str,
    slug: str,
    detail: str,
    request_id: str | None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    body: dict[str, Any] = {
        "type": f"urn:gateway:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if request_id is not None:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return orjson.dumps(body)


def problem_response(error: GatewayError, request_id: str | None) -> web.Response:
    response = web.Response(
        status=error.status,
        body=problem_body(
            error.status, error.title, error.slug, error.detail, request_id, error.extra
        ),
        content_type=PROBLEM_CONTENT_TYPE,
    )
    for name, value in error.headers.items():
        response.headers[name] = value
    return response
