"""Route matching: static paths by one dict lookup, templates by segment.

A template is ``/v1/users/{id}``: each ``{name}`` matches exactly one non-empty path
segment; a final ``{name:path}`` matches the rest of the path (one segment or more).
Literal segments win over parameters, and parameters over a tail, whatever the order
of the routes in the file, so adding a route never silently shadows another.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .errors import MethodNotAllowed, NotFound

T = TypeVar("T")

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}$")


@dataclass(frozen=True, slots=True)
class Template:
    path: str
    segments: tuple[str, ...]
    # For each segment: None for a literal, else the parameter's name.
    params_at: tuple[str | None, ...]
    tail: str | None
    params: tuple[str, ...]
    # The template with parameter names erased: two templates of one shape match the
    # same requests, so the config refuses a second route on the same shape and method.
    shape: str
    # Where each parameter of ``segments`` sits, in the order of ``params``: what
    # ``_bind`` reads.
    positions: tuple[int, ...]

    @property
    def is_static(self) -> bool:
        return not self.params


def compile_template(path: str) -> Template:
    if not path.startswith("/"):
        raise ValueError(f"a route path starts with '/': {path!r}")
    raw_segments = path.split("/")[1:]
    if path != "/" and any(segment == "" for segment in raw_segments[:-1]):
        raise ValueError(f"empty segment ('//') in route path {path!r}")
    segments: list[str] = []
    params_at: list[str | None] = []
    params: list[str] = []
    tail: str | None = None
    shape: list[str] = []
    for position, segment in enumerate(raw_segments):
        if segment in (".", ".."):
            raise ValueError(f"dot segment in route path {path!r}")
        if "{" in segment or "}" in segment:
            match = _PARAM.match(segment)
            if match is None:
                raise ValueError(
                    f"bad parameter {segment!r} in {path!r}: a parameter is a whole segment, "
                    "written {name} or, last, {name:path}"
                )
            name, kind = match.group(1), match.group(2)
            if name in params:
                raise ValueError(f"parameter {{{name}}} appears twice in {path!r}")
            params.append(name)
            if kind == "path":
                if position != len(raw_segments) - 1:
                    raise ValueError(f"{{{name}:path}} must be the last segment of {path!r}")
                tail = name
                shape.append("{*}")
                continue
            segments.append(segment)
            params_at.append(name)
            shape.append("{}")
        else:
            segments.append(segment)
            params_at.append(None)
            shape.append(segment)
    return Template(
        path=path,
        segments=tuple(segments),
        params_at=tuple(params_at),
        tail=tail,
        params=tuple(params),
        shape="/" + "/".join(shape),
        positions=tuple(i for i, name in enumerate(params_at) if name is not None),
    )


@dataclass(slots=True)
class _Endpoint(Generic[T]):
    """Everything routed at one path shape: the value per method and the Allow list."""

    template: Template
    by_method: dict[str, T] = field(default_factory=dict)
    allow: tuple[str, ...] = ()
    # HEAD answered by the GET route (RFC 9110 section 9.3.2) until a route claims it.
    implied_head: bool = False


@dataclass(slots=True)
class _Node(Generic[T]):
    literal: dict[str, _Node[T]] = field(default_factory=dict)
    param: _Node[T] | None = None
    endpoint: _Endpoint[T] | None = None
    tail: _Endpoint[T] | None = None


class Router(Generic[T]):
    """Maps (method, normalised path) to a value and the path's parameters.

    The most specific route *that has the method* wins: ``POST /f/{x}`` does not hide
    ``GET /f/{rest:path}`` from ``GET /f/a``. 405 lists every method any matching
    route has.
    """

    __slots__ = ("_root", "_static")

    def __init__(self) -> None:
        self._static: dict[str, _Endpoint[T]] = {}
        self._root: _Node[T] = _Node()

    def add(self, template: Template, methods: Sequence[str], value: T) -> None:
        endpoint = self._endpoint_for(template)
        for method in methods:
            if method == "HEAD" and endpoint.implied_head:
                endpoint.implied_head = False
            elif method in endpoint.by_method:
                raise ValueError(f"{method} {template.path} is already routed")
            endpoint.by_method[method] = value
        if "GET" in endpoint.by_method and "HEAD" not in endpoint.by_method:
            endpoint.by_method["HEAD"] = endpoint.by_method["GET"]
            endpoint.implied_head = True
        endpoint.allow = tuple(sorted(endpoint.by_method))

    def _endpoint_for(self, template: Template) -> _Endpoint[T]:
        if template.is_static:
            return self._static.setdefault(template.path, _Endpoint(template))
        node = self._root
        for segment, param in zip(template.segments, template.params_at, strict=True):
            if param is None:
                node = node.literal.setdefault(segment, _Node())
            else:
                if node.param is None:
                    node.param = _Node()
                node = node.param
        if template.tail is not None:
            if node.tail is None:
                node.tail = _Endpoint(template)
            return node.tail
        if node.endpoint is None:
            node.endpoint = _Endpoint(template)
        return node.endpoint

    def match(self, method: str, path: str) -> tuple[T, dict[str, str]]:
        """Raises ``NotFound`` or ``MethodNotAllowed`` (with ``Allow``)."""
        static = self._static.get(path)
        if static is not None:
            value = static.by_method.get(method)
            if value is not None:
                return value, {}
        segments = path[1:].split("/")
        found = self._first_path(segments, method)
        if found is None:
            found = self._walk(self._root, segments, 0, method)
        if found is not None:
            return found.by_method[method], _bind(found.template, segments)
        # The slow path, only for errors: which methods would have matched?
        allow: set[str] = set(static.by_method) if static is not None else set()
        for endpoint in self._all_matches(self._root, segments, 0):
            allow.update(endpoint.by_method)
        if not allow:
            raise NotFound(f"no route for {path}")
        raise MethodNotAllowed(f"{method} is not allowed on {path}", allow=tuple(sorted(allow)))

    def _first_path(self, segments: list[str], method: str) -> _Endpoint[T] | None:
        """The first path ``_walk`` tries (a literal before a parameter, a parameter
        before a tail), followed without going back: when it ends at an endpoint with
        the method, that is ``_walk``'s answer too, found in one frame instead of one
        per segment. None sends the request to ``_walk``, which does go back."""
        node = self._root
        for segment in segments:
            child = node.literal.get(segment)
            if child is None:
                child = node.param
                if child is None or not segment:
                    tail = node.tail
                    if tail is not None and segment and method in tail.by_method:
                        return tail
                    return None
            node = child
        endpoint = node.endpoint
        return endpoint if endpoint is not None and method in endpoint.by_method else None

    def _walk(
        self, node: _Node[T], segments: list[str], index: int, method: str
    ) -> _Endpoint[T] | None:
        if index == len(segments):
            endpoint = node.endpoint
            return endpoint if endpoint is not None and method in endpoint.by_method else None
        segment = segments[index]
        child = node.literal.get(segment)
        if child is not None:
            found = self._walk(child, segments, index + 1, method)
            if found is not None:
                return found
        if not segment:
            return None
        if node.param is not None:
            found = self._walk(node.param, segments, index + 1, method)
            if found is not None:
                return found
        tail = node.tail
        return tail if tail is not None and method in tail.by_method else None

    def _all_matches(
        self, node: _Node[T], segments: list[str], index: int
    ) -> Iterator[_Endpoint[T]]:
        if index == len(segments):
            if node.endpoint is not None:
                yield node.endpoint
            return
        segment = segments[index]
        child = node.literal.get(segment)
        if child is not None:
            yield from self._all_matches(child, segments, index + 1)
        if not segment:
            return
        if node.param is not None:
            yield from self._all_matches(node.param, segments, index + 1)
        if node.tail is not None:
            yield node.tail


def _bind(template: Template, segments: list[str]) -> dict[str, str]:
    # zip and map in C: a comprehension is a frame of its own on every request. A tail
    # comes last in ``params`` and has no position: zip stops before it.
    params = dict(zip(template.params, map(segments.__getitem__, template.positions), strict=False))
    if template.tail is not None:
        params[template.tail] = "/".join(segments[len(template.params_at) :])
    return params
