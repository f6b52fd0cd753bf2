"""Config -> Runtime: compiled routes, handler chains and upstream pools, built whole.

A Runtime is immutable once built. A reload builds a new one and swaps it in with one
reference assignment; requests already running keep the Runtime they started on, and
the old Runtime's pools are released only after its last request has finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

from .config.loader import LoadedConfig
from .config.model import GatewayConfig, HealthSpec, PoolSpec, RouteSpec
from .context import Clock
from .metrics.recorder import NO_ROUTE, RouteMetrics, RouteRecorders
from .pipeline import CompiledRoute, Handler, Policy, build_chain
from .policies.auth.oauth import JwksEndpoint, TokenEndpoint
from .policies.auth.policy import ApiKeyMethod, AuthPolicy, JwtMethod, Method, ScopeRule
from .policies.auth.services import AuthServices
from .policies.cache.policy import CachePolicy, ResponseCache
from .policies.conditional import ConditionalPolicy
from .policies.idempotency.policy import IdempotencyPolicy
from .policies.idempotency.store import IdempotencyStore
from .policies.ratelimit.policy import Limiter, RateLimitPolicy
from .policies.validation import ValidationPolicy
from .policies.versioning import VersionDispatch, VersionPolicy
from .routing import Router, compile_template
from .upstream.assemble import make_part
from .upstream.fanout import Backend, FanoutHandler
from .upstream.pool import PoolKey, PoolRegistry, UpstreamPool
from .upstream.proxy import ProxyHandler, ProxySettings
from .upstream.urls import UrlTemplate

#: Response bodies up to this size (with a declared length) are read whole before the
#: response starts, so a truncated body is still a clean 502.
BUFFER_LIMIT = 64 * 1024


@dataclass(slots=True)
class Runtime:
    config: GatewayConfig
    files: tuple[str, ...]
    router: Router[CompiledRoute]
    routes: tuple[CompiledRoute, ...]
    pool_keys: list[PoolKey]
    #: Whether requests take part in W3C Trace Context (``tracing.enabled``).
    tracing: bool = True
    #: Where requests no route matched are recorded; None when metrics are off.
    unrouted: RouteMetrics | None = None
    #: Every route requests are recorded under, by name, in config order: budgets and
    #: kinds for the metrics and the dashboard. A header- or media-type-versioned API
    #: has its versions' routes (a request is recorded under the version it was
    #: answered by) and its dispatcher (the requests refused before a version was
    #: chosen: no version given and no default, or one nobody serves).
    routed: dict[str, CompiledRoute] = field(default_factory=dict)
    #: Requests currently being answered on this Runtime; it is retired at zero.
    in_flight: int = 0


@dataclass(slots=True)
class Services:
    """The long-lived parts every Runtime of a process builds on (they outlive reloads)."""

    registry: PoolRegistry
    clock: Clock
    auth: AuthServices | None = None
    limiter: Limiter | None = None
    cache: ResponseCache | None = None
    idempotency: IdempotencyStore | None = None
    #: Every route's metrics recorder by name; they outlive reloads, so counts go on.
    recorders: RouteRecorders | None = None


async def build_runtime(loaded: LoadedConfig, services: Services) -> Runtime:
    """Build every route of ``loaded``. Runs on the event loop (it opens sessions)."""
    config = loaded.config
    registry = services.registry
    builder = _Builder(config, services)
    router: Router[CompiledRoute] = Router()
    routes = []
    try:
        # Header and media-type versions share a path: one dispatcher per (path, method)
        # picks the version's route; URI versions are ordinary routes.
        versioned: dict[tuple[str, str], tuple[str, dict[str, CompiledRoute]]] = {}
        for spec in config.routes:
            route = builder.instrument(builder.compile(spec))
            routes.append(route)
            api = config.apis.get(spec.api) if spec.api is not None else None
            if api is not None and api.strategy != "uri" and spec.version is not None:
                for method in spec.methods:
                    entry = versioned.setdefault((spec.path, method), (spec.api or "", {}))
                    entry[1][spec.version] = route
                continue
            router.add(compile_template(spec.path), spec.methods, route)
        for (path, method), (api_name, by_version) in versioned.items():
            name = f"{api_name}:{'|'.join(r.name for r in by_version.values())}"
            dispatch = VersionDispatch(config.apis[api_name], by_version)
            router.add(
                compile_template(path),
                [method],
                builder.instrument(
                    CompiledRoute(
                        name=name,
                        path=path,
                        methods=(method,),
                        # Its own answers are refusals (400, 404, 406), never a
                        # fan-out's: no budget or partial figures for it.
                        kind="proxy",
                        budget=max(r.budget for r in by_version.values()),
                        handler=dispatch,
                    )
                ),
            )
        for route in builder.builtin_routes():
            route = builder.instrument(route)
            router.add(compile_template(route.path), route.methods, route)
            routes.append(route)
    except BaseException:
        # Leave the registry as it was: a failed build must not leak pools.
        await registry.release(builder.keys)
        raise
    return Runtime(
        config=config,
        files=tuple(str(path) for path in loaded.files),
        router=router,
        routes=tuple(routes),
        pool_keys=builder.keys,
        tracing=config.tracing.enabled,
        unrouted=builder.recorders.route(NO_ROUTE) if builder.recorders is not None else None,
        routed=builder.routed,
    )


class _Builder:
    def __init__(self, config: GatewayConfig, services: Services) -> None:
        self.config = config
        self.registry = services.registry
        self.clock = services.clock
        self.auth = auth = services.auth
        self.limiter = services.limiter
        self.cache = services.cache
        self.idempotency = services.idempotency
        self.recorders = services.recorders if config.metrics.enabled else None
        self.routed: dict[str, CompiledRoute] = {}
        self.keys: list[PoolKey] = []
        self.jwt = auth.jwt_verifier(config) if auth is not None else None
        server = config.server
        self.settings = ProxySettings(
            via=server.via,
            trust_forwarded=server.trust_forwarded,
            forwarded_headers=server.forwarded_headers,
            max_body_size=server.limits.max_body_size,
            buffer_limit=BUFFER_LIMIT,
            identity_headers=_identity_header_names(config),
        )

    def compile(self, spec: RouteSpec) -> CompiledRoute:
        name = spec.name or f"{'|'.join(spec.methods)} {spec.path}"
        api = self.config.apis.get(spec.api) if spec.api is not None else None
        if spec.name is None and api is not None and api.strategy != "uri":
            # Versions that share a path would otherwise share a name, and a recorder.
            name += f" v{spec.version}"
        template = compile_template(spec.path)
        tails = frozenset({template.tail}) if template.tail else frozenset()
        terminal: Handler
        if spec.proxy is not None:
            proxy = spec.proxy
            if proxy.upstream is not None:
                upstream = self.config.upstreams[proxy.upstream]
                pool = self._pool(
                    PoolKey(proxy.upstream, tuple(upstream.targets), upstream.pool, upstream.health)
                )
                prefix, host_mode = "", upstream.host_header
            else:
                assert proxy.url is not None
                origin, prefix = _split_url(proxy.url)
                # A prefix joins the request path, which brings its own leading '/'.
                prefix = prefix.rstrip("/")
                pool = self._pool(PoolKey(origin, (origin,), PoolSpec(), HealthSpec()))
                host_mode = "target"
            terminal = ProxyHandler(
                pool=pool,
                prefix=prefix,
                path=UrlTemplate.compile(proxy.path, tails) if proxy.path is not None else None,
                timeout=proxy.timeout,
                host_mode=host_mode,
                settings=self.settings,
                timing_name=proxy.upstream or "upstream",
            )
            kind: Literal["proxy", "fanout"] = "proxy"
            budget = proxy.timeout
        else:
            fanout = spec.fanout
            assert fanout is not None
            backends = []
            parts = []
            for backend_name, backend in fanout.backends.items():
                origin, rest = _split_url(backend.url)
                pool = self._pool(PoolKey(origin, (origin,), PoolSpec(), HealthSpec()))
                backends.append(
                    Backend(
                        name=backend_name,
                        pool=pool,
                        url=UrlTemplate.compile(rest or "/", tails),
                        method=backend.method,
                        timeout=backend.timeout if backend.timeout is not None else fanout.budget,
                    )
                )
                parts.append(
                    make_part(
                        backend_name, backend.required, backend.fallback, backend.has_fallback
                    )
                )
            terminal = FanoutHandler(
                backends=backends, parts=parts, partial_in_body=fanout.partial_in_body
            )
            kind = "fanout"
            budget = fanout.budget
        return CompiledRoute(
            name=name,
            path=spec.path,
            methods=tuple(spec.methods),
            kind=kind,
            budget=budget,
            handler=build_chain(
                self._version(spec)
                + self._auth(spec)
                + ([ValidationPolicy(spec.validation)] if spec.validation is not None else [])
                # Replays are answered before the rate limit unless the route says
                # they count against it.
                + self._idempotency(spec, name, budget, before_rate_limit=True)
                + self._rate_limit(spec, name)
                + self._idempotency(spec, name, budget, before_rate_limit=False)
                + self._conditional(spec, terminal)
                + self._cached(spec, name),
                terminal,
            ),
            spec=spec,
        )

    def instrument(self, route: CompiledRoute) -> CompiledRoute:
        """``route`` with its metrics recorder, for a route that requests reach."""
        if self.recorders is not None:
            route = replace(route, metrics=self.recorders.route(route.name))
        self.routed[route.name] = route
        return route

    def _version(self, spec: RouteSpec) -> list[Policy]:
        if spec.api is None or spec.version is None:
            return []
        version = self.config.apis[spec.api].versions[spec.version]
        return [VersionPolicy(version, self.clock)]

    def _idempotency(
        self, spec: RouteSpec, name: str, budget: float, *, before_rate_limit: bool
    ) -> list[Policy]:
        route_spec = spec.idempotency
        if route_spec is None or route_spec.replays_count_against_rate_limit == before_rate_limit:
            return []
        if self.idempotency is None:
            raise RuntimeError("a route takes idempotency keys but no store was started")
        lock_ttl = budget + self.config.idempotency.lock_margin
        return [IdempotencyPolicy(self.idempotency, route_spec, name, lock_ttl)]

    def _cached(self, spec: RouteSpec, name: str) -> list[Policy]:
        if spec.cache is None and not spec.invalidates:
            return []
        if self.cache is None:
            raise RuntimeError("a route caches but no response cache was started")
        return [CachePolicy(self.cache, spec.cache, spec.invalidates, name)]

    def _conditional(self, spec: RouteSpec, terminal: Handler) -> list[Policy]:
        if spec.conditional is None:
            return []
        current = terminal.current_etag if isinstance(terminal, ProxyHandler) else None
        return [ConditionalPolicy(spec.conditional, current)]

    def _rate_limit(self, spec: RouteSpec, name: str) -> list[Policy]:
        if spec.rate_limit is None:
            return []
        if self.limiter is None:
            raise RuntimeError("a route is rate limited but no limiter was started")
        limits = self.config.rate_limits
        return [
            RateLimitPolicy(
                self.limiter,
                name,
                spec.rate_limit,
                limits.plans,
                limits.consumers,
                self.config.auth.default_plan,
            )
        ]

    def _auth(self, spec: RouteSpec) -> list[Policy]:
        if spec.auth == "none":
            return []
        if self.auth is None:
            raise RuntimeError("a route authenticates but auth services were not started")
        methods: list[Method] = []
        for name in spec.auth:
            if name == "api_key":
                keys = self.config.auth.api_keys
                methods.append(ApiKeyMethod(self.auth.api_keys, keys.header, keys.query_param))
            else:
                assert self.jwt is not None
                allowed = frozenset(spec.issuers) if spec.issuers is not None else None
                methods.append(JwtMethod(self.jwt, allowed))
        scopes = ScopeRule(spec.scopes) if spec.scopes is not None else None
        return [AuthPolicy(methods, scopes, spec.identity_headers, spec.hide_credentials)]

    def builtin_routes(self) -> list[CompiledRoute]:
        """The token endpoint and the JWKS, when the gateway issues tokens."""
        oauth = self.config.auth.oauth
        if not oauth.enabled or self.auth is None:
            return []
        auth = self.auth
        token = TokenEndpoint(
            store=auth.store,
            peppers=auth.peppers,
            sign=auth.signing.sign,
            spec=oauth,
            clock=auth.clock,
            on_store_error=auth.count_token_store_error,
        )
        jwks = JwksEndpoint(lambda: auth.signing.jwks_document)
        return [
            CompiledRoute("oauth-token", oauth.token_path, ("POST",), "builtin", 5.0, token),
            CompiledRoute("jwks", oauth.jwks_path, ("GET",), "builtin", 5.0, jwks),
        ]

    def _pool(self, key: PoolKey) -> UpstreamPool:
        pool = self.registry.acquire(key)
        self.keys.append(key)
        return pool


def _identity_header_names(config: GatewayConfig) -> frozenset[str]:
    """Every header name any route sends upstream as identity: never from a client."""
    names: set[str] = set()
    for route in config.routes:
        spec = route.identity_headers
        names.update(
            name
            for name in (spec.consumer_id, spec.plan, spec.scopes, spec.credential)
            if name is not None
        )
        names.update(spec.claims.values())
    return frozenset(names)


def _split_url(url: str) -> tuple[str, str]:
    """``http://h:1/a/b?c`` -> (``http://h:1``, ``/a/b?c``)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    rest = url[len(origin) :]
    if rest and not rest.startswith(("/", "?")):
        rest = "/" + rest
    return origin, rest
