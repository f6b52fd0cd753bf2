"""RFC 9111 decisions for a shared cache: pure functions, no I/O, no clock of their own.

- ``directives`` parses ``Cache-Control`` (case-insensitive names, quoted values).
- ``storable``: a shared cache may store a response to GET when nothing forbids it
  (``no-store``, ``private``, ``Set-Cookie``, a request with ``Authorization`` unless
  the response says ``public``/``s-maxage``/``must-revalidate``) and it is either
  cacheable by default by status or carries explicit freshness (section 3).
- ``freshness_lifetime``: ``s-maxage``, then ``max-age``, then ``Expires - Date``, then
  the route's configured TTL as the heuristic (section 4.2.1).
- ``Vary``: a stored response is chosen only for requests whose varied headers have the
  same values (section 4.1); ``Vary: *`` never matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from multidict import MultiMapping

#: Statuses a cache may store without explicit freshness (RFC 9110 section 15.1).
CACHEABLE_BY_DEFAULT = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})


def directives(value: str | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    if not value:
        return out
    for part in _split_outside_quotes(value):
        name, sep, argument = part.strip().partition("=")
        name = name.strip().lower()
        if name:
            out[name] = argument.strip().strip('"') if sep else None
    return out


def _split_outside_quotes(value: str) -> list[str]:
    """Split on commas, except inside a quoted-string (``no-cache="A, B"``)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _seconds(value: str | None) -> float | None:
    # isdecimal and ASCII: "²".isdigit() is true, and float("²") raises.
    if value is None or not value.isascii() or not value.isdecimal():
        return None
    return float(value)


def _date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def storable(
    status: int,
    request_cc: Mapping[str, str | None],
    response_cc: Mapping[str, str | None],
    response_headers: Mapping[str, str],
    request_has_authorization: bool,
    has_default_ttl: bool,
) -> bool:
    if "no-store" in request_cc or "no-store" in response_cc or "private" in response_cc:
        return False
    if "Set-Cookie" in response_headers:
        return False
    if status == 206:
        return False  # a range of the representation, never the whole of it
    if request_has_authorization and not (
        "public" in response_cc or "s-maxage" in response_cc or "must-revalidate" in response_cc
    ):
        return False
    explicit = (
        "max-age" in response_cc
        or "s-maxage" in response_cc
        or "public" in response_cc
        or "Expires" in response_headers
    )
    return explicit or (
        status in CACHEABLE_BY_DEFAULT and (has_default_ttl or "no-cache" in response_cc)
    )


def freshness_lifetime(
    response_cc: Mapping[str, str | None],
    headers: Mapping[str, str],
    default_ttl: float,
    received_at: float,
) -> float:
    """``received_at`` (epoch seconds) stands in for a missing ``Date``."""
    for name in ("s-maxage", "max-age"):
        seconds = _seconds(response_cc.get(name))
        if seconds is not None:
            return seconds
    if "Expires" in headers:
        expires = _date(headers.get("Expires"))
        if expires is None:
            return 0.0  # RFC 9111 section 5.3: an invalid Expires means already expired
        # RFC 9110 section 6.6.1: a recipient adds a missing Date (the time it
        # received the message) before caching, so that is the origin's "now".
        date = _date(headers.get("Date")) if "Date" in headers else received_at
        if date is None:
            return 0.0
        return max(0.0, expires - date)
    return default_ttl


def initial_age(headers: Mapping[str, str]) -> float:
    return _seconds(headers.get("Age")) or 0.0


def vary_names(headers: MultiMapping[str]) -> tuple[str, ...] | None:
    """The request header names a response varies on, lower-cased; None for ``*``."""
    names: list[str] = []
    for value in headers.getall("Vary", []):
        for name in value.split(","):
            name = name.strip().lower()
            if name == "*":
                return None
            if name:
                names.append(name)
    return tuple(sorted(set(names)))


def stale_window(response_cc: Mapping[str, str | None], name: str) -> float:
    """Seconds a stale response may still be used for ``stale-while-revalidate`` or
    ``stale-if-error`` (RFC 5861); zero under ``must-revalidate``/``no-cache``, and
    under ``s-maxage``, which for a shared cache carries ``proxy-revalidate``'s meaning
    (RFC 9111 section 5.2.2.10)."""
    if (
        "must-revalidate" in response_cc
        or "proxy-revalidate" in response_cc
        or "s-maxage" in response_cc
        or "no-cache" in response_cc
    ):
        return 0.0
    return _seconds(response_cc.get(name)) or 0.0
