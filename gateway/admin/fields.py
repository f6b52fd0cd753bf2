"""The admin API's field rules, in one place for the handlers and the OpenAPI document.

The patterns are written so that Python's ``re`` and ECMA-262 (which JSON Schema uses)
read them the same way: ``[0-9]`` rather than ``\\d`` (Unicode digits in Python), and
``fullmatch`` here where the document anchors with ``^...$``. A request the document
calls valid is accepted, and one it calls invalid is refused: the fuzz test holds the
two to that.
"""

from __future__ import annotations

import re
from typing import Any

from ..config.units import parse_duration
from .http import invalid

#: Consumer ids, plans and scopes travel upstream in identity headers and scopes are
#: space-separated in OAuth: visible ASCII only, no spaces or control characters.
IDENTIFIER = "^[\\x21-\\x7e]{1,128}$"
#: A duration as in the config files (``90d``, ``12h``, ``1.5s``), bounded in length.
DURATION = "^[0-9]{1,9}(\\.[0-9]{1,6})?(us|ms|s|m|h|d)$"
#: Durations given as a number of seconds: up to 100 years.
MAX_SECONDS = 100 * 365 * 86400
#: Cache purges name request paths.
CACHE_PATH = "^/"

_IDENTIFIER = re.compile(IDENTIFIER[1:-1])
_DURATION = re.compile(DURATION[1:-1])


def identifier(body: dict[str, Any], field: str, *, required: bool) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        rule = "required, " if required else ""
        raise invalid(field, rule + "1 to 128 visible ASCII characters (no spaces)")
    return value


def scopes(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("scopes", [])
    if not isinstance(value, list) or not all(
        isinstance(scope, str) and _IDENTIFIER.fullmatch(scope) for scope in value
    ):
        raise invalid("scopes", "a list of scopes, each 1 to 128 visible ASCII characters")
    return tuple(value)


def duration(body: dict[str, Any], field: str, default: float | None) -> float | None:
    """Seconds, from ``"90d"`` or a number of seconds; ``default`` when absent."""
    if field not in body:
        return default
    value = body[field]
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value <= MAX_SECONDS:
            return float(value)
    elif isinstance(value, str) and _DURATION.fullmatch(value):
        return parse_duration(value)
    raise invalid(field, f"a duration such as 90d, 12h or 30s, or 0 to {MAX_SECONDS} seconds")
