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
# scheme://user:password@ (or scheme://token@) inside any text: an error quoting a value.
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*)(?P<password>:[^@/\s]*)?@"
)


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
        return scrub(url)
    netloc = parts.netloc
    if "@" in netloc:
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
    """Free text (an error message) with the passwords of any URLs in it masked."""

    def masked(match: re.Match[str]) -> str:
        if match["password"] is None:
            return f"{match['scheme']}{MASK}@"
        return f"{match['scheme']}{match['user']}:{MASK}@"

    return _USERINFO.sub(masked, text)
