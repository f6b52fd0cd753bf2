"""What the gateway serves now: its routes with their compiled policy chains, and its config.

A route's chain is read from the compiled handler (``unfold_chain``), so the order
shown is the order requests meet; each policy's settings come from the route's config
section it was built from. Everything shown goes through ``redact``: URLs keep their
host and path but not their credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..config.model import GatewayConfig, RouteSpec
from ..pipeline import CompiledRoute, unfold_chain
from ..policies.auth.policy import AuthPolicy
from ..policies.cache.policy import CachePolicy
from ..policies.conditional import ConditionalPolicy
from ..policies.idempotency.policy import IdempotencyPolicy
from ..policies.ratelimit.policy import RateLimitPolicy
from ..policies.validation import ValidationPolicy
from ..policies.versioning import VersionPolicy
from .http import json_response
from .redact import redact
from .view import GATEWAY

Settings = Callable[[RouteSpec, GatewayConfig], dict[str, Any]]


def _version(spec: RouteSpec, config: GatewayConfig) -> dict[str, Any]:
    assert spec.api is not None
    assert spec.version is not None
    api = config.apis[spec.api]
    return {
        "api": spec.api,
        "version": spec.version,
        "strategy": api.strategy,
        **api.versions[spec.version].model_dump(mode="json"),
    }


def _auth(spec: RouteSpec, config: GatewayConfig) -> dict[str, Any]:
    return {
        "methods": [] if spec.auth == "none" else list(spec.auth),
        "scopes": spec.scopes.model_dump(mode="json", exclude_none=True) if spec.scopes else None,
        "issuers": list(spec.issuers) if spec.issuers is not None else None,
        "identity_headers": spec.identity_headers.model_dump(mode="json"),
        "hide_credentials": spec.hide_credentials,
    }


def _validation(spec: RouteSpec, config: GatewayConfig) -> dict[str, Any]:
    assert spec.validation is not None
    # The schemas themselves can be long: GET /admin/config has them.
    return {
        "body_schema": spec.validation.body is not None,
        "query_schema": spec.validation.query is not None,
        "content_types": list(spec.validation.content_types),
        "max_body_size": spec.validation.max_body_size,
    }


def _idempotency(spec: RouteSpec, config: GatewayConfig) -> dict[str, Any]:
    assert spec.idempotency is not None
    return {**spec.idempotency.model_dump(mode="json"), "store": config.idempotency.store}


def _rate_limit(spec: RouteSpec, config: GatewayConfig) -> dict[str, Any]:
    assert spec.rate_limit is not None
    return {**spec.rate_limit.model_dump(mode="json"), "store": config.rate_limits.store}


def _conditional(spec: RouteSpec, config: GatewayConfig) -> dict[str, Any]:
    assert spec.conditional is not None
    return spec.conditional.model_dump(mode="json")


def _cache(spec: RouteSpec, config: GatewayConfig) -> dict[str, Any]:
    own = spec.cache.model_dump(mode="json") if spec.cache is not None else {}
    return {**own, "invalidates": list(spec.invalidates)}


#: Policy classes by the name the admin API gives them, in no particular order: the
#: order shown is the chain's.
_POLICIES: dict[type, tuple[str, Settings]] = {
    VersionPolicy: ("version", _version),
    AuthPolicy: ("auth", _auth),
    ValidationPolicy: ("validation", _validation),
    IdempotencyPolicy: ("idempotency", _idempotency),
    RateLimitPolicy: ("rate_limit", _rate_limit),
    ConditionalPolicy: ("conditional", _conditional),
    CachePolicy: ("cache", _cache),
}


def _policy(policy: object, spec: RouteSpec | None, config: GatewayConfig) -> dict[str, Any]:
    known = _POLICIES.get(type(policy))
    if known is None:
        # A policy this module does not know yet: shown by its class, without settings.
        return {"policy": type(policy).__name__, "settings": {}}
    name, settings = known
    return {"policy": name, "settings": settings(spec, config) if spec is not None else {}}


def _upstream(route: CompiledRoute, config: GatewayConfig) -> dict[str, Any]:
    spec = route.spec
    if spec is None:
        return {"kind": "builtin", "endpoint": route.name}
    if spec.proxy is not None:
        proxy = spec.proxy
        upstream = config.upstreams.get(proxy.upstream) if proxy.upstream is not None else None
        return {
            "kind": "proxy",
            "upstream": proxy.upstream,
            "targets": list(upstream.targets) if upstream is not None else [proxy.url],
            "path": proxy.path,
            "timeout": proxy.timeout,
        }
    fanout = spec.fanout
    assert fanout is not None
    return {
        "kind": "fanout",
        "budget": fanout.budget,
        "partial_in_body": fanout.partial_in_body,
        "backends": [
            {
                "name": name,
                "url": backend.url,
                "method": backend.method,
                "timeout": backend.timeout if backend.timeout is not None else fanout.budget,
                "required": backend.required,
                "fallback": backend.has_fallback,
            }
            for name, backend in fanout.backends.items()
        ],
    }


def describe_route(route: CompiledRoute, config: GatewayConfig) -> dict[str, Any]:
    policies, _terminal = unfold_chain(route.handler)
    spec = route.spec
    return {
        "name": route.name,
        "path": route.path,
        "methods": list(route.methods),
        "kind": route.kind,
        "budget": route.budget,
        "api": spec.api if spec is not None else None,
        "version": spec.version if spec is not None else None,
        "policies": [_policy(policy, spec, config) for policy in policies],
        "upstream": _upstream(route, config),
    }


async def list_routes(request: web.Request) -> web.Response:
    runtime = request.app[GATEWAY].runtime
    routes = [describe_route(route, runtime.config) for route in runtime.routes]
    return json_response({"routes": redact(routes)})


async def show_config(request: web.Request) -> web.Response:
    runtime = request.app[GATEWAY].runtime
    return json_response(
        {"files": list(runtime.files), "config": redact(runtime.config.model_dump(mode="json"))}
    )
