"""The typed shape of the configuration.

Every model forbids unknown keys and is frozen: config is parsed once, at load, and
never consulted as raw data afterwards. Defaults live here and only here.
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from .units import parse_duration, parse_rate, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
#: (units, seconds): ``10/s`` -> (10, 1), ``10000/day`` -> (10000, 86400).
Rate = Annotated[tuple[float, float], BeforeValidator(parse_rate)]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,40}$")
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
    #: After SIGTERM, how long the gateway goes on accepting and serving while
    #: ``/readyz`` already answers 503, so load balancers stop sending before the
    #: listener closes. 0: the listener closes at once.
    drain_delay: Duration = 0.0
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


JwtAlgorithm = Literal["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "EdDSA"]


class ApiKeySpec(Spec):
    #: Header that carries a key (``Authorization: Bearer gwk_...`` always works too).
    header: str = "X-API-Key"
    #: Query parameter that may carry a key; off by default because URLs get logged.
    query_param: str | None = None


class OAuthSpec(Spec):
    """The gateway as an OAuth2 authorization server (client credentials)."""

    enabled: bool = False
    #: ``iss`` of the tokens the gateway issues.
    issuer: str = "http://127.0.0.1:8080"
    #: ``aud`` of the tokens the gateway issues.
    audience: str = "gateway"
    token_ttl: Duration = 900.0
    algorithm: Literal["ES256", "RS256", "EdDSA"] = "ES256"
    token_path: str = "/oauth/token"  # noqa: S105 - a URL path, not a secret
    jwks_path: str = "/.well-known/jwks.json"
    #: How often a running gateway re-reads its signing keys (a rotation by the CLI).
    key_refresh: Duration = 10.0


class StaticKeySpec(Spec):
    kid: str | None = None
    #: A PEM public key...
    pem: str | None = None
    #: ...or a public JWK.
    jwk: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> StaticKeySpec:
        if (self.pem is None) == (self.jwk is None):
            raise ValueError("a static key has exactly one of `pem:` or `jwk:`")
        return self


class JwksSpec(Spec):
    #: Floor and ceiling on the JWKS's own cache lifetime (its Cache-Control max-age).
    min_ttl: Duration = 60.0
    max_ttl: Duration = 86400.0
    #: At most one refetch per cooldown when a token names an unknown ``kid``.
    cooldown: Duration = 30.0
    #: Time allowed for one fetch of the JWKS.
    timeout: Duration = 2.0


class IssuerSpec(Spec):
    """A trusted JWT issuer: the gateway itself, a JWKS URL, or static keys."""

    issuer: str
    #: ``self``: the gateway's own signing keys.
    keys: Literal["self"] | None = None
    jwks_url: Annotated[str, BeforeValidator(_check_url)] | None = None
    static_keys: tuple[StaticKeySpec, ...] | None = None
    jwks: JwksSpec = JwksSpec()
    #: Accepted ``aud`` values; a token must name one of them.
    audience: tuple[str, ...] = Field(min_length=1)
    #: Pinned: a token signed with anything else is refused.
    algorithms: tuple[JwtAlgorithm, ...] = Field(min_length=1)
    leeway: Duration = 30.0
    consumer_claim: str = "sub"
    plan_claim: str = "plan"
    default_plan: str = "free"
    scope_claim: str = "scope"

    @field_validator("audience", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSpec:
        given = [self.keys is not None, self.jwks_url is not None, self.static_keys is not None]
        if sum(given) != 1:
            raise ValueError(
                "an issuer has exactly one key source: `keys: self`, `jwks_url:` or `static_keys:`"
            )
        return self


class AuthSpec(Spec):
    #: Where consumers, API keys, OAuth clients and signing keys live.
    store: Literal["sqlite", "redis"] = "sqlite"
    sqlite_path: str = "var/credentials.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: The versioned server secrets that key the credential hashes (created on first run).
    pepper_file: str = "var/pepper.json"
    #: How long a verified API key lookup is trusted before the store is asked again.
    cache_ttl: Duration = 10.0
    #: How long an unknown key id is remembered as unknown.
    negative_cache_ttl: Duration = 30.0
    #: The plan of a consumer the store does not know (or a token without a plan).
    default_plan: str = "free"
    api_keys: ApiKeySpec = ApiKeySpec()
    oauth: OAuthSpec = OAuthSpec()
    issuers: dict[str, IssuerSpec] = Field(default_factory=dict)


class AdminSpec(Spec):
    enabled: bool = False
    listen: ListenSpec = ListenSpec(port=8081)
    #: The admin token: from this environment variable when set, else from the file
    #: (created with a random token on first run).
    token_env: str = "GATEWAY_ADMIN_TOKEN"  # noqa: S105 - a variable name
    token_file: str = "var/admin-token"  # noqa: S105 - a file path


class MetricsSpec(Spec):
    #: Record every request, upstream call and fan-out for ``GET /metrics`` on the
    #: admin listener. Off, none is recorded; the endpoint still shows what the cache,
    #: the limiter, the stores and reloads count anyway.
    enabled: bool = True


class TracingSpec(Spec):
    #: Take part in W3C Trace Context: keep a valid incoming ``traceparent`` (or start
    #: a trace), send each upstream call a span id of its own, log the trace id. Off,
    #: ``traceparent`` and ``tracestate`` pass through like any other header.
    enabled: bool = True


class ScopesSpec(Spec):
    any_of: tuple[str, ...] | None = None
    all_of: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> ScopesSpec:
        if (self.any_of is None) == (self.all_of is None):
            raise ValueError("scopes take exactly one of `any_of:` or `all_of:`")
        return self


class IdentityHeadersSpec(Spec):
    """Which facts about the caller go upstream, under which header names."""

    consumer_id: str | None = "X-Consumer-Id"
    plan: str | None = "X-Consumer-Plan"
    scopes: str | None = "X-Consumer-Scopes"
    credential: str | None = "X-Credential-Kind"
    #: JWT claims to forward: claim name -> header name.
    claims: dict[str, str] = Field(default_factory=dict)


class LimitSpec(Spec):
    """A sustained rate with a burst, and/or a long quota."""

    #: Sustained rate: ``10/s``, ``600/minute``.
    rate: Rate | None = None
    #: How many requests may come at once before the rate spaces them (default: one
    #: second's worth of the rate, at least 1).
    burst: int | None = Field(None, ge=1)
    #: A long quota over a fixed window aligned to UTC: ``10000/day``, ``500/hour``.
    quota: Rate | None = None

    @model_validator(mode="after")
    def _something(self) -> LimitSpec:
        if self.rate is None and self.quota is None:
            raise ValueError("a limit needs `rate:` or `quota:` (or both)")
        if self.burst is not None and self.rate is None:
            raise ValueError("`burst:` goes with `rate:`")
        if self.quota is not None and self.quota[0] != int(self.quota[0]):
            raise ValueError("a quota is a whole number of requests")
        return self


class ContractSpec(Spec):
    """A consumer's contract: its plan, and overrides on top of it."""

    plan: str | None = None
    rate: Rate | None = None
    burst: int | None = Field(None, ge=1)
    quota: Rate | None = None

    @field_validator("quota")
    @classmethod
    def _whole_quota(cls, quota: tuple[float, float] | None) -> tuple[float, float] | None:
        if quota is not None and quota[0] != int(quota[0]):
            raise ValueError("a quota is a whole number of requests")
        return quota


class BreakerSpec(Spec):
    #: Consecutive store failures that open the breaker.
    failures: int = Field(3, ge=1)
    #: How long the breaker stays open before one request probes the store again.
    open_for: Duration = 2.0


class RateLimitsSpec(Spec):
    #: ``memory`` (this process) or ``redis`` (shared by every node).
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: The slice of a request's budget one Redis decision may take.
    redis_timeout: Duration = 0.005
    breaker: BreakerSpec = BreakerSpec()
    plans: dict[str, LimitSpec] = Field(default_factory=dict)
    #: Contract overrides per consumer id.
    consumers: dict[str, ContractSpec] = Field(default_factory=dict)


class RouteLimitSpec(Spec):
    #: What to count by: the consumer, the API key, the client IP, or a header.
    by: str = "consumer"
    #: Units one request costs (a five-way fan-out may cost 5).
    cost: int = Field(1, ge=1)
    #: Apply the consumer's plan (and contract). Off: only this route's own `limit`.
    plan: bool = True
    #: For `by: ip` or `by: header:...`: the plan those callers are on.
    anonymous_plan: str | None = None
    #: This route's own limit, on top of the plan's.
    limit: LimitSpec | None = None
    #: When the store cannot answer: admit (and mark), refuse with 503, or decide on a
    #: local limiter at `local_share` of each limit.
    on_store_down: Literal["fail_open", "fail_closed", "local_fallback"] = "fail_open"
    local_share: float = Field(1.0, gt=0, le=1)
    #: Decide and report (headers) without refusing: try a limit on live traffic.
    shadow: bool = False

    @field_validator("by")
    @classmethod
    def _by(cls, value: str) -> str:
        if value in ("consumer", "api_key", "ip") or (
            value.startswith("header:") and len(value) > len("header:")
        ):
            return value
        raise ValueError(f"`by` is consumer, api_key, ip or header:<name>, not {value!r}")


class ConditionalSpec(Spec):
    """Conditional requests answered at the edge (RFC 9110 section 13)."""

    #: Give GET/HEAD 200s a strong ETag (a hash of the body) when the upstream sent none.
    etag: bool = True
    #: Refuse writes without ``If-Match`` (428), or whose ``If-Match`` does not name the
    #: current representation (412): optimistic concurrency.
    require_if_match: bool = False


class CacheSpec(Spec):
    """The process's response cache."""

    #: Total size of the stored responses (an LRU evicts beyond it).
    max_bytes: Size = 64 * 1024 * 1024
    #: Largest single response stored.
    max_entry_size: Size = 1024 * 1024
    #: Publish invalidations here so every node drops the entry (optional).
    redis_url: str | None = None
    channel: str = "gw:cache:invalidate"


class RouteCacheSpec(Spec):
    #: Freshness for responses whose upstream says nothing about it (no max-age,
    #: s-maxage or Expires); 0 stores only what the upstream makes cacheable.
    ttl: Duration = 0.0
    #: ``consumer``: each consumer has its own entries; ``public``: shared by every
    #: consumer, used only when the upstream marks the response public or s-maxage.
    scope: Literal["consumer", "public"] = "consumer"


class ValidationSpec(Spec):
    """JSON Schemas checked at the edge, compiled once when the config loads."""

    #: Schema for the JSON request body (on POST, PUT, PATCH).
    body: dict[str, Any] | None = None
    #: Schema for the query parameters, seen as an object of strings (a repeated
    #: parameter is a list of strings).
    query: dict[str, Any] | None = None
    content_types: tuple[str, ...] = ("application/json",)
    max_body_size: Size = 1024 * 1024

    @model_validator(mode="after")
    def _something(self) -> ValidationSpec:
        if self.body is None and self.query is None:
            raise ValueError("validation needs `body:` or `query:` (or both)")
        return self


class IdempotencyStoreSpec(Spec):
    """Where idempotency records live."""

    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout: Duration = 0.05
    #: Added to a route's budget for how long an in-flight lock lives: a node that dies
    #: holding a key does not block it for longer.
    lock_margin: Duration = 5.0


class RouteIdempotencySpec(Spec):
    methods: tuple[Literal["POST", "PUT", "PATCH", "DELETE"], ...] = ("POST", "PATCH")
    #: Refuse (400) requests without an ``Idempotency-Key``.
    required: bool = False
    #: How long an answered request is remembered.
    ttl: Duration = 86400.0
    #: Largest request (and response) body the route keeps for fingerprints and
    #: replays; larger requests are refused up front (413).
    max_body_size: Size = 1024 * 1024
    #: Count replays against the rate limit too (by default they are free).
    replays_count_against_rate_limit: bool = False


class VersionSpec(Spec):
    #: From when the version is deprecated (``Deprecation``, RFC 9745).
    deprecated: datetime.date | None = None
    #: When it stops being served (``Sunset``, RFC 8594).
    sunset: datetime.date | None = None
    #: A page about the deprecation (``Link: <...>; rel="deprecation"``).
    link: str | None = None
    #: After the sunset, answer 410 Gone instead of serving.
    gone_after_sunset: bool = False


class ApiSpec(Spec):
    """How the versions of one API are told apart, and their lifecycle."""

    #: ``uri`` (``/v1/...`` in the route paths), ``header`` (``API-Version: 2``) or
    #: ``media_type`` (``Accept: application/vnd.acme.v2+json``).
    strategy: Literal["uri", "header", "media_type"]
    header: str = "API-Version"
    #: The vendor type without version and suffix: ``application/vnd.acme``.
    media_type: str | None = None
    #: The version for clients that name none (header and media type strategies).
    default: str | None = None
    versions: dict[str, VersionSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ApiSpec:
        if self.strategy == "media_type" and self.media_type is None:
            raise ValueError("the media_type strategy needs `media_type:` (application/vnd.name)")
        if self.default is not None and self.default not in self.versions:
            raise ValueError(f"default version {self.default!r} is not under `versions:`")
        for version in self.versions:
            if not _VERSION.match(version):
                raise ValueError(f"version {version!r}: use letters, digits, '.', '-', '_'")
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
    #: Authentication methods tried in order, or ``none``.
    auth: Literal["none"] | tuple[Literal["api_key", "jwt"], ...] = "none"
    #: JWT issuers (names under ``auth.issuers``) this route trusts; default: all.
    issuers: tuple[str, ...] | None = None
    scopes: ScopesSpec | None = None
    identity_headers: IdentityHeadersSpec = IdentityHeadersSpec()
    rate_limit: RouteLimitSpec | None = None
    conditional: ConditionalSpec | None = None
    cache: RouteCacheSpec | None = None
    validation: ValidationSpec | None = None
    idempotency: RouteIdempotencySpec | None = None
    #: The API (under ``apis:``) and version this route serves.
    api: str | None = None
    version: str | None = None
    #: Routes whose cached GETs a successful write here invalidates, as templates that
    #: may use this route's parameters (``/v1/dashboard/{id}``); this URL always is.
    invalidates: tuple[str, ...] = ()
    #: Remove the credential the gateway checked (key or token) before proxying; the
    #: upstream learns who called from the identity headers instead.
    hide_credentials: bool = True
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

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_list(cls, value: object) -> object:
        return (value,) if isinstance(value, str) and value != "none" else value

    @model_validator(mode="after")
    def _one_upstream(self) -> RouteSpec:
        if self.auth != "none" and len(set(self.auth)) != len(self.auth):
            raise ValueError("an authentication method is listed twice")
        if self.auth == "none" and (self.scopes is not None or self.issuers is not None):
            raise ValueError("`scopes:` and `issuers:` need `auth:`")
        if (self.api is None) != (self.version is None):
            raise ValueError("`api:` and `version:` go together")
        if (
            self.conditional is not None
            and self.conditional.require_if_match
            and (self.fanout is not None)
        ):
            raise ValueError(
                "`require_if_match` needs a `proxy:` route (writes go to one upstream)"
            )
        if self.proxy is None and self.fanout is None:
            raise ValueError("a route needs an upstream: add `proxy:` or `fanout:`")
        if self.proxy is not None and self.fanout is not None:
            raise ValueError("a route has either `proxy:` or `fanout:`, not both")
        return self


class GatewayConfig(Spec):
    server: ServerSpec = ServerSpec()
    auth: AuthSpec = AuthSpec()
    admin: AdminSpec = AdminSpec()
    metrics: MetricsSpec = MetricsSpec()
    tracing: TracingSpec = TracingSpec()
    rate_limits: RateLimitsSpec = RateLimitsSpec()
    cache: CacheSpec = CacheSpec()
    idempotency: IdempotencyStoreSpec = IdempotencyStoreSpec()
    apis: dict[str, ApiSpec] = Field(default_factory=dict)
    #: Further files holding ``upstreams:`` and ``routes:``, relative to this file.
    include: tuple[str, ...] = ()
    upstreams: dict[str, UpstreamSpec] = Field(default_factory=dict)
    routes: tuple[RouteSpec, ...] = ()
