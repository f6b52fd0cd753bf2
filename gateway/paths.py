"""Request-path normalisation, done before any route is matched.

Rules (so that no encoding can reach a route it should not):
- percent-escapes of unreserved characters (letters, digits, ``-._~``) are decoded, so
  ``%2e%2e`` is ``..`` and is then removed as a dot segment, and ``/v1/%75sers`` is
  ``/v1/users``; other escapes are kept, with upper-case hex;
- encoded ``/``, ``\\`` and NUL, a raw backslash or control character, and a malformed
  escape are refused (400): an upstream might decode them into path separators we
  never matched on;
- runs of ``/`` collapse to one, and dot segments are removed (RFC 3986 section 5.2.4),
  never climbing above the root.
The normalised path is what the router matches and what the upstream receives.
"""

from __future__ import annotations

from .errors import BadRequest

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_REFUSED_ESCAPES = {"2F": "an encoded '/'", "5C": "an encoded '\\'", "00": "an encoded NUL"}


def normalise_path(path: str) -> str:
    """Normalise a raw request path (without its query). Raises ``BadRequest``."""
    if not path.startswith("/"):
        raise BadRequest("the request target must be an absolute path")
    if not path.isprintable():
        raise BadRequest("the request path contains a control character")
    # The common case, a clean path, costs a few scans in C and no allocation.
    if "%" not in path and "//" not in path and "/." not in path and "\\" not in path:
        return path
    if "\\" in path:
        raise BadRequest("a backslash is not allowed in the request path")
    if "%" in path:
        path = _decode_unreserved(path)
    return _remove_dot_segments(path)


def _decode_unreserved(path: str) -> str:
    out: list[str] = []
    index = 0
    length = len(path)
    while index < length:
        char = path[index]
        if char != "%":
            out.append(char)
            index += 1
            continue
        escape = path[index + 1 : index + 3]
        if len(escape) != 2 or not (escape[0] in _HEX and escape[1] in _HEX):
            raise BadRequest("the request path has a malformed percent-escape")
        escape = escape.upper()
        refused = _REFUSED_ESCAPES.get(escape)
        if refused is not None:
            raise BadRequest(f"the request path contains {refused}")
        decoded = chr(int(escape, 16))
        out.append(decoded if decoded in _UNRESERVED else "%" + escape)
        index += 3
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    trailing_slash = path.endswith(("/", "/.", "/.."))
    kept: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if kept:
                kept.pop()
            continue
        kept.append(segment)
    result = "/" + "/".join(kept)
    if trailing_slash and kept:
        result += "/"
    return result
