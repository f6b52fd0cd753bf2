"""Which headers cross the gateway, in each direction.

- Hop-by-hop headers (RFC 9110 section 7.6.1) never cross, nor any header the
  ``Connection`` header names.
- Identity headers the gateway sets for upstreams are removed from the client's request
  first, so a client can never forge them.
- ``Via`` is extended, and ``X-Forwarded-For``/``-Proto``/``-Host`` and ``Forwarded``
  describe the client as the gateway saw it. A client's own forwarding headers are kept
  only when ``server.trust_forwarded`` says the gateway sits behind a trusted proxy.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Headers only the gateway may send upstream.
IDENTITY_HEADERS = frozenset(
    {
        "x-consumer-id",
        "x-consumer-plan",
        "x-consumer-scopes",
        "x-credential-kind",
        "x-authenticated-userid",
    }
)

#: Headers the gateway writes itself on the way up.
_REWRITTEN_UP = frozenset({"host", "expect", "content-length", "x-request-id"})
_FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"})

BUDGET_HEADER = "Gateway-Budget-Ms"


def request_drop_set(identity_headers: frozenset[str], trust_forwarded: bool) -> frozenset[str]:
    """Lower-case names never copied from a client's request: built once per config."""
    drop = HOP_BY_HOP | IDENTITY_HEADERS | _REWRITTEN_UP | {BUDGET_HEADER.lower()}
    drop |= {name.lower() for name in identity_headers}
    return drop if trust_forwarded else drop | _FORWARDING


#: Our framing replaces the upstream's: aiohttp writes Content-Length or chunking.
_DROP_DOWN = HOP_BY_HOP | {"content-length"}


def _connection_tokens(value: str) -> frozenset[str]:
    return frozenset(token.strip().lower() for token in value.split(","))


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    drop: frozenset[str],
    trust_forwarded: bool,
    x_forwarded: bool,
    forwarded: bool,
    client_ip: str,
    scheme: str,
    via: str,
) -> CIMultiDict[str]:
    """The client's headers less what must not cross, plus the forwarding headers."""
    out = _copy_except(incoming, drop)
    host = incoming.get("Host", "")
    if x_forwarded:
        if trust_forwarded:
            _append(out, incoming, "X-Forwarded-For", client_ip)
            out.setdefault("X-Forwarded-Proto", scheme)
            if host:
                out.setdefault("X-Forwarded-Host", host)
        else:
            out["X-Forwarded-For"] = client_ip
            out["X-Forwarded-Proto"] = scheme
            if host:
                out["X-Forwarded-Host"] = host
    if forwarded:
        element = _forwarded_element(client_ip, scheme, host)
        if trust_forwarded:
            _append(out, incoming, "Forwarded", element)
        else:
            out["Forwarded"] = element
    _append(out, incoming, "Via", via)
    return out


def downstream_response_headers(upstream: CIMultiDictProxy[str], via: str) -> CIMultiDict[str]:
    out = _copy_except(upstream, _DROP_DOWN)
    _append(out, upstream, "Via", via)
    return out


def _copy_except(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """A copy without the ``drop`` names and those the ``Connection`` header names.

    Copied whole in C, then the few names to drop that are present removed (the keys
    view's ``&`` is case-insensitive): a loop over every header in Python cost more.
    """
    connection = headers.get("Connection")
    if connection:
        drop = drop | _connection_tokens(connection)
    out: CIMultiDict[str] = CIMultiDict(headers)
    for name in headers.keys() & drop:
        out.popall(name, None)
    return out


def _append(out: CIMultiDict[str], prior: Mapping[str, str], name: str, element: str) -> None:
    """Extend a list-valued header (``Via``, ``Forwarded``...) with our own element."""
    before = prior.get(name)
    out[name] = f"{before}, {element}" if before else element


_TOKEN_HOST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")


def _forwarded_element(client_ip: str, scheme: str, host: str) -> str:
    # RFC 7239: an IPv6 address is quoted and bracketed; a host that is not a plain
    # token (a port's ':' is enough) must be a quoted-string.
    node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
    element = f"for={node};proto={scheme}"
    if host and all(char in _TOKEN_HOST for char in host):
        element += f";host={host}"
    elif host:
        escaped = host.replace("\\", "\\\\").replace('"', '\\"')
        element += f';host="{escaped}"'
    return element
