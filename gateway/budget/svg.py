"""Just enough SVG writing for the report's charts: escaped elements and a linear axis.

Hand-made rather than a plotting library: three simple charts do not need a
dependency, and the output is plain markup that a page can inline, so the report
opens anywhere with no network and no script.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

from .analysis import nice_step

__all__ = ["Scale", "class_name", "element", "number", "text", "tick_label", "title"]

_NOT_CLASS = re.compile(r"[^a-z0-9_-]+")


def number(value: float) -> str:
    """A coordinate: one decimal at most, no trailing zeros (``12``, ``12.5``)."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def class_name(value: str) -> str:
    """A string made safe to use as a CSS class (an outcome named by a server)."""
    return _NOT_CLASS.sub("-", value.lower()).strip("-") or "other"


def element(tag: str, attributes: Mapping[str, object] | None = None, *children: str) -> str:
    """``<tag a="v">children</tag>``; values escaped, floats written with ``number``.

    Children are markup already (built by this function or ``text``), so they are not
    escaped again.
    """
    parts = [tag]
    for name, value in (attributes or {}).items():
        shown = number(value) if isinstance(value, float) else str(value)
        parts.append(f'{name}="{escape(shown, quote=True)}"')
    head = " ".join(parts)
    if not children:
        return f"<{head}/>"
    return f"<{head}>{''.join(children)}</{tag}>"


def text(x: float, y: float, content: str, attributes: Mapping[str, object] | None = None) -> str:
    """A ``<text>`` element with its content escaped."""
    return element("text", {"x": x, "y": y, **(attributes or {})}, escape(content, quote=False))


def title(content: str) -> str:
    """A ``<title>`` (a tooltip in SVG) with its content escaped."""
    return element("title", None, escape(content, quote=False))


@dataclass(frozen=True, slots=True)
class Scale:
    """Values from 0 to ``top`` mapped linearly onto pixels ``start`` to ``end``."""

    top: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        if self.top <= 0:
            return self.start
        return self.start + (self.end - self.start) * value / self.top

    def ticks(self, about: int = 5) -> list[float]:
        """Round values from 0 up to ``top``, about ``about`` of them."""
        if not (self.top > 0 and math.isfinite(self.top)):
            return [0.0]
        step = nice_step(self.top / about)
        return [i * step for i in range(math.floor(self.top / step + 1e-9) + 1)]


def tick_label(value: float) -> str:
    """An axis label: whole numbers plain, small fractions with their decimals."""
    return f"{value:g}"
