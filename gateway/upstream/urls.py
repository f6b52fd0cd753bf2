"""URL templates with route parameters, compiled once at config load.

A route parameter comes from the normalised request path, where it may still hold
percent-escapes. It is decoded and then re-encoded for where it lands, so a value can
never add a path segment, a query parameter or a fragment to the upstream URL
(``{id}`` = ``1&admin=true`` becomes ``1%26admin%3Dtrue``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def placeholders(text: str) -> list[str]:
    names = _PLACEHOLDER.findall(text)
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"bad placeholder {{{name}}} in {text!r}")
    stripped = _PLACEHOLDER.sub("", text)
    if "{" in stripped or "}" in stripped:
        raise ValueError(f"unbalanced braces in {text!r}")
    return names


@dataclass(frozen=True, slots=True)
class UrlTemplate:
    """Literal pieces and placeholders in order: ``pieces[0] p0 pieces[1] p1 ... pieces[n]``."""

    pieces: tuple[str, ...]
    names: tuple[str, ...]
    # Characters left unescaped per placeholder: a tail (``{rest:path}``) keeps its '/'.
    safe: tuple[str, ...]

    @classmethod
    def compile(cls, text: str, tails: frozenset[str] = frozenset()) -> UrlTemplate:
        names = placeholders(text)
        pieces = tuple(_PLACEHOLDER.split(text)[0::2])
        safe = tuple("/" if name in tails else "" for name in names)
        return cls(pieces, tuple(names), safe)

    @property
    def is_static(self) -> bool:
        return not self.names

    def render(self, params: dict[str, str]) -> str:
        if not self.names:
            return self.pieces[0]
        out = [self.pieces[0]]
        for index, name in enumerate(self.names):
            out.append(quote(unquote(params[name]), safe=self.safe[index]))
            out.append(self.pieces[index + 1])
        return "".join(out)
