"""Conditional requests, RFC 9110 section 13: pure functions, no I/O.

- Entity tags are compared *weakly* for ``If-None-Match`` (``W/"a"`` matches ``"a"``)
  and *strongly* for ``If-Match`` (both must be strong and equal), section 13.1.
- ``If-None-Match: *`` matches any current representation; so does ``If-Match: *``.
- ``If-Modified-Since`` is evaluated only when there is no ``If-None-Match``, and only
  against a ``Last-Modified`` (section 13.1.3); an unparseable date is ignored.
"""

from __future__ import annotations

import hashlib
import re
from email.utils import parsedate_to_datetime

# An entity-tag: optional W/ then a quoted opaque string of etagc characters.
_ETAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')

#: Headers a 304 carries over from the 200 it stands for (RFC 9110 section 15.4.5),
#: plus the cache's own Age and Cache-Status (RFC 9111, RFC 9211).
NOT_MODIFIED_HEADERS = frozenset(
    {
        "Age",
        "Cache-Control",
        "Cache-Status",
        "Content-Location",
        "Date",
        "ETag",
        "Expires",
        "Last-Modified",
        "Vary",
    }
)


def strong_etag(body: bytes) -> str:
    """A strong validator computed from the body: same bytes, same tag."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def parse_tags(value: str) -> list[tuple[bool, str]] | None:
    """``W/"a", "b"`` -> [(True, '"a"'), (False, '"b"')]; None for ``*``; [] if malformed."""
    if value.strip() == "*":
        return None
    tags: list[tuple[bool, str]] = []
    position = 0
    while position < len(value):
        match = _ETAG.match(value, position)
        if match is None:
            return []  # malformed: treated as matching nothing
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


def _split(etag: str) -> tuple[bool, str]:
    return (True, etag[2:]) if etag.startswith("W/") else (False, etag)


def none_match(if_none_match: str, current: str | None) -> bool:
    """True when ``If-None-Match`` says the client's copy is current (weak comparison)."""
    if current is None:
        return False
    tags = parse_tags(if_none_match)
    if tags is None:
        return True
    opaque = _split(current)[1]
    return any(tag == opaque for _, tag in tags)


def match(if_match: str, current: str | None) -> bool:
    """True when ``If-Match`` holds (strong comparison): the write may go ahead."""
    if current is None:
        return False
    tags = parse_tags(if_match)
    if tags is None:
        return True
    weak, opaque = _split(current)
    return not weak and any(not tag_weak and tag == opaque for tag_weak, tag in tags)


def not_modified_since(if_modified_since: str, last_modified: str | None) -> bool:
    """True when the representation has not changed since the client's date."""
    if last_modified is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
        modified = parsedate_to_datetime(last_modified)
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None or modified.tzinfo is None:
        return False
    return modified <= since
