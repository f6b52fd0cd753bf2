"""Answers of the admin API: JSON bodies and RFC 9457 problems, and reading a JSON body.

Every error the admin listener gives is ``application/problem+json`` with a
``urn:gateway:problem:admin-*`` type, the same shape as the gateway's own errors.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..errors import PROBLEM_CONTENT_TYPE, problem_body

#: Admin answers describe live state (and some hold a secret shown once): never cached.
_NO_STORE = {"Cache-Control": "no-store"}


class AdminProblem(Exception):
    """Raised by a handler to answer with a problem; turned into one by the middleware."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    slug = "admin-" + title.lower().replace(" ", "-")
    return web.Response(
        status=status,
        body=problem_body(status, title, slug, detail, None, extra),
        content_type=PROBLEM_CONTENT_TYPE,
        headers={**_NO_STORE, **(headers or {})},
    )


def invalid(field: str, message: str) -> AdminProblem:
    """422: the body parsed, but a field breaks the operation's schema."""
    return AdminProblem(422, "Invalid field", f"{field}: {message}", extra={"field": field})


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data),
        content_type="application/json",
        headers=_NO_STORE,
    )


async def read_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; no body is an empty object.

    400 when it is not JSON at all, 422 when it is JSON but not an object (it parsed:
    the shape is what is wrong). 413 comes from aiohttp when it exceeds the app's
    ``client_max_size``.
    """
    raw = await request.read() if request.can_read_body else b""
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AdminProblem(400, "Bad request", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    return body


def allow_only(body: dict[str, Any], fields: frozenset[str]) -> None:
    """A misspelt field (``scope`` for ``scopes``) must not be silently ignored."""
    unknown = sorted(set(body) - fields)
    if unknown:
        raise invalid(unknown[0], f"unknown field; expected one of {sorted(fields)}")
