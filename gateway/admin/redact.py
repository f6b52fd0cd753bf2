"""Secrets out of what the admin API shows: config values and error texts.

The config holds no secret of its own (tokens, peppers and keys live in files and
stores it only names), but URLs may carry credentials: ``redis://:password@host``,
``http://user:password@host``, or ``?password=...`` / ``?token=...`` in a query. Those
are replaced with ``***`` wherever they appear, as are string values under a key whose
name says it is secret, in case such a key is ever added.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Query parameter names (split at punctuation) that carry a credential.
_SECRET_WORDS = frozenset(
    {"pass", "passwd", "password", "pwd", "secret", "token", "key", "apikey", "auth"}
    | {"authorization", "credential", "credentials", "signature", "sig", "session"}
)
# Key names that are exactly these hold a secret; names that merely contain "token"
# (``token_ttl``, ``token_path``, ``token_env``) are settings about one.
_SECRET_KEYS = frozenset({"password", "secret", "client_secret", "token", "pepper", "private_key"})
# A URL inside free text (an error quoting a value): up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with credentials masked."""
    if isinstance(value, dict):
        return {
            key: MASK
            if isinstance(key, str) and key.lower() in _SECRET_KEYS and isinstance(item, str)
            else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        # Not parseable as a URL: mask everything between the scheme and the last "@".
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}{MASK}@{rest.rpartition('@')[2]}" if "@" in rest else url
    netloc = parts.netloc
    if "@" in netloc:
        # The last "@" ends the userinfo: a raw "@" inside a password stays masked.
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_name(name) for name, _ in pairs):
            query = urlencode(
                [(name, MASK if _secret_name(name) else val) for name, val in pairs],
                safe="{}/:*",
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    if any(word in lowered for word in ("password", "secret", "token")):
        return True
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", lowered))


def scrub(text: str) -> str:
    """Free text (an error message) with every URL in it redacted as ``redact_url``
    does: passwords in the userinfo and credentials in the query."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match[0]), text)
