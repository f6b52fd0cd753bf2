"""The typed shape of the configuration.

Every model forbids unknown keys and is frozen: config is parsed once, at load, and
never consulted as raw data afterwards. Defaults live here and only here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_HTTP_URL = re.compile(r"^https?://[^/?#\s]+(/[^\s]*)?$")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _check_url(value: str) -> str:
    if not _HTTP_URL.match(value):
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value


class ListenSpec(Spec):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class LimitsSpec(Spec):
    #: Largest request body accepted (413 beyond it).
    max_body_size: Size = 1024 * 1024
    #: Largest single header line (name + value); beyond it the request gets 431.
    max_header_size: Size = 8 * 1024
    #: Most header fields in one request.
    max_headers: int = Field(100, ge=1, le=10_000)
    #: Longest request line (method, target, version).
    max_request_line: Size = 8 * 1024


class ServerSpec(Spec):
    listen: ListenSpec = ListenSpec()
    limits: LimitsSpec = LimitsSpec()
    #: How long in-flight requests may run on after SIGTERM before they are cut.
    shutdown_timeout: Duration = 10.0
    #: ``stdout``, ``off``, or a file path for the JSON access log.
    access_log: str = "stdout"
    #: The pseudonym this gateway adds to ``Via``.
    via: str = "gateway"
    #: Keep the client's ``X-Forwarded-For``/``Forwarded`` chain (only behind a proxy
    #: you trust); otherwise the gateway replaces it with what it saw itself.
    trust_forwarded: bool = False
    #: Which forwarding headers go upstream: ``x-forwarded`` (``X-Forwarded-For``,
    #: ``-Proto``, ``-Host``), ``forwarded`` (RFC 7239), or ``both``.
    forwarded_headers: Literal["x-forwarded", "forwarded", "both"] = "x-forwarded"
    #: Reload when a config file changes on disk (SIGHUP always reloads).
    watch: bool = True


class PoolSpec(Spec):
    max_connections: int = Field(100, ge=1, le=100_000)
    keepalive: Duration = 30.0
    connect_timeout: Duration = 1.0


class HealthSpec(Spec):
    #: Consecutive failures after which a target is skipped.
    max_failures: int = Field(1, ge=1)
    #: How long a failed target is skipped.
    cooldown: Duration = 10.0


class UpstreamSpec(Spec):
    targets: tuple[Annotated[str, BeforeValidator(_check_url)], ...] = Field(min_length=1)
    pool: PoolSpec = PoolSpec()
    health: HealthSpec = HealthSpec()
    #: ``target`` (the target's host:port), ``client`` (the client's Host), or a literal.
    host_header: str = "target"

    @field_validator("targets")
    @classmethod
    def _no_path_on_targets(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        for target in targets:
            parts = urlsplit(target)
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ValueError(f"a target is an origin, without a path: {target!r}")
        return tuple(target.rstrip("/") for target in targets)


class ProxySpec(Spec):
    #: A named upstream from ``upstreams:``...
    upstream: str | None = None
    #: ...or one target URL written inline.
    url: Annotated[str, BeforeValidator(_check_url)] | None = None
    #: Upstream path template (``/users/{id}``); default: the request's own path.
    path: str | None = None
    #: Time allowed until the upstream's response headers arrive.
    timeout: Duration = 30.0

    @field_validator("url")
    @classmethod
    def _no_placeholders(cls, url: str | None) -> str | None:
        if url is not None and ("{" in url or "}" in url):
            raise ValueError("a proxy `url:` takes no placeholders; put them in `path:`")
        return url

    @model_validator(mode="after")
    def _one_destination(self) -> ProxySpec:
        if (self.upstream is None) == (self.url is None):
            raise ValueError("a proxy needs exactly one of `upstream:` or `url:`")
        return self


class BackendSpec(Spec):
    #: Full URL template: ``http://127.0.0.1:9102/orders?user={id}``.
    url: Annotated[str, BeforeValidator(_check_url)]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    #: This backend's own timeout; capped by what is left of the route's budget.
    timeout: Duration | None = None
    #: A required part that is missing fails the whole response (504/502).
    required: bool = False
    #: A static JSON value used in place of an optional part that is missing.
    fallback: Any = None

    @property
    def has_fallback(self) -> bool:
        return "fallback" in self.model_fields_set


class FanoutSpec(Spec):
    budget: Duration = 0.05
    partial_in_body: bool = False
    backends: dict[str, BackendSpec] = Field(min_length=1)

    @field_validator("backends")
    @classmethod
    def _backend_names(cls, backends: dict[str, BackendSpec]) -> dict[str, BackendSpec]:
        for name in backends:
            if not _NAME.match(name):
                raise ValueError(
                    f"backend name {name!r} must start with a letter and use only "
                    "letters, digits, '-' and '_'"
                )
        return backends


class RouteSpec(Spec):
    name: str | None = None
    path: str
    methods: tuple[str, ...] = Field(default=("GET",), min_length=1)
    proxy: ProxySpec | None = None
    fanout: FanoutSpec | None = None

    @field_validator("path")
    @classmethod
    def _path_shape(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"a route path starts with '/': {path!r}")
        return path

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(method.upper() for method in methods)
        unknown = sorted(set(upper) - _METHODS)
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; use {sorted(_METHODS)}")
        if len(set(upper)) != len(upper):
            raise ValueError("a method is listed twice")
        return upper

    @model_validator(mode="after")
    def _one_upstream(self) -> RouteSpec:
        if self.proxy is None and self.fanout is None:
            raise ValueError("a route needs an upstream: add `proxy:` or `fanout:`")
        if self.proxy is not None and self.fanout is not None:
            raise ValueError("a route has either `proxy:` or `fanout:`, not both")
        return self


class GatewayConfig(Spec):
    server: ServerSpec = ServerSpec()
    #: Further files holding ``upstreams:`` and ``routes:``, relative to this file.
    include: tuple[str, ...] = ()
    upstreams: dict[str, UpstreamSpec] = Field(default_factory=dict)
    routes: tuple[RouteSpec, ...] = ()
