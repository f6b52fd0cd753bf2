"""Read the config files, validate them, and report every problem with file:line."""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..policies.schemas import compile_schema
from ..routing import compile_template
from ..upstream.urls import placeholders
from .errors import ConfigError, ConfigIssue
from .model import ContractSpec, GatewayConfig, LimitSpec, RouteSpec
from .source import KeyPath, SourceMap, format_key_path, load_yaml

_INCLUDABLE_KEYS = ("upstreams", "routes")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: GatewayConfig
    #: Every file read, so a watcher knows what to watch.
    files: tuple[Path, ...]

    @property
    def base_dir(self) -> Path:
        """Relative paths in the config (state files) are relative to this folder."""
        return self.files[0].parent


def load_config(path: str | Path) -> LoadedConfig:
    main_path = Path(path)
    raw, sources = load_yaml(main_path, str(path))
    files = [main_path.resolve()]
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue(str(path), 1, "", "the top level must be a mapping")])
    _merge_includes(raw, sources, main_path, files)
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_issues_from_validation(exc, sources)) from None
    issues = _cross_check(config, sources) + _check_plans(config, sources)
    if issues:
        raise ConfigError(issues)
    return LoadedConfig(config, tuple(files))


def _merge_includes(raw: dict[str, Any], sources: SourceMap, main: Path, files: list[Path]) -> None:
    includes = raw.get("include", [])
    if not isinstance(includes, list):
        return  # validation reports the type error with its line
    for index, name in enumerate(includes):
        if not isinstance(name, str):
            continue
        include_path = main.parent / name
        display = str(main.parent / name) if main.parent != Path(".") else name
        included, included_sources = load_yaml(include_path, display)
        files.append(include_path.resolve())
        if included == {}:
            continue
        origin = sources.locate(("include", index))
        if not isinstance(included, dict):
            raise ConfigError([ConfigIssue(display, 1, "", "the top level must be a mapping")])
        unknown = sorted(set(included) - set(_INCLUDABLE_KEYS))
        if unknown:
            line = included_sources.locate((unknown[0],))
            raise ConfigError(
                [
                    ConfigIssue(
                        display,
                        line.line if line else None,
                        unknown[0],
                        f"an included file holds only {list(_INCLUDABLE_KEYS)}"
                        + (f" (included from {origin.file}:{origin.line})" if origin else ""),
                    )
                ]
            )
        for upstream_name, spec in (included.get("upstreams") or {}).items():
            upstreams = raw.setdefault("upstreams", {})
            if not isinstance(upstreams, dict):
                break
            if upstream_name in upstreams:
                where = included_sources.locate(("upstreams", upstream_name))
                raise ConfigError(
                    [
                        ConfigIssue(
                            display,
                            where.line if where else None,
                            f"upstreams.{upstream_name}",
                            "this upstream name is already defined",
                        )
                    ]
                )
            upstreams[upstream_name] = spec
            sources.graft(
                included_sources, ("upstreams", upstream_name), ("upstreams", upstream_name)
            )
        routes = raw.setdefault("routes", [])
        if isinstance(routes, list):
            included_routes = included.get("routes") or []
            if not isinstance(included_routes, list):
                where = included_sources.locate(("routes",))
                raise ConfigError(
                    [
                        ConfigIssue(
                            display,
                            where.line if where else None,
                            "routes",
                            "must be a list of routes (each one starting with '- ')",
                        )
                    ]
                )
            for position, route in enumerate(included_routes):
                routes.append(route)
                sources.graft(included_sources, ("routes", len(routes) - 1), ("routes", position))


def _issues_from_validation(exc: ValidationError, sources: SourceMap) -> list[ConfigIssue]:
    errors = [
        (error["type"], error["msg"], tuple(p for p in error["loc"] if isinstance(p, str | int)))
        for error in exc.errors(include_url=False)
    ]
    issues = []
    for kind, message, loc in errors:
        # A list whose only item was refused is also "too short": say only the first.
        if kind == "too_short" and any(
            other[: len(loc)] == loc and other != loc for _, _, other in errors
        ):
            continue
        issues.append(_issue_at(sources, loc, _humane_message(kind, message, loc)))
    return issues


def _issue_at(sources: SourceMap, loc: KeyPath, message: str) -> ConfigIssue:
    origin = sources.locate(loc)
    if origin is None:
        return ConfigIssue("<config>", None, format_key_path(loc), message)
    return ConfigIssue(origin.file, origin.line, format_key_path(origin.local_path), message)


def _humane_message(kind: str, message: str, loc: KeyPath) -> str:
    if kind == "extra_forbidden" and loc:
        key = str(loc[-1])
        allowed = _keys_at(loc[:-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {key!r}{hint}"
    if kind == "missing" and loc:
        return f"missing required key {loc[-1]!r}"
    return message.removeprefix("Value error, ")


def _keys_at(loc: KeyPath) -> list[str]:
    """The keys allowed in the mapping at ``loc``, found by walking the models' types."""
    current: Any = GatewayConfig
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int) or not (
            isinstance(current, type) and issubclass(current, BaseModel)
        ):
            # An index into a list, or a key of a free-form mapping (a backend name).
            current = _item_type(current)
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = field.annotation
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``; ``Annotated[X, ...]`` -> ``X``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _item_type(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _cross_check(config: GatewayConfig, sources: SourceMap) -> list[ConfigIssue]:
    """Checks that span several parts of the tree: names that must resolve or be unique."""
    issues = []
    seen_names: dict[str, int] = {}
    seen_routes: dict[tuple[str, str, str | None], int] = {}
    for index, route in enumerate(config.routes):
        at: KeyPath = ("routes", index)
        if route.name is not None:
            if route.name in seen_names:
                first = sources.locate(("routes", seen_names[route.name]))
                where = f" (first at {first.file}:{first.line})" if first else ""
                issues.append(
                    _issue_at(
                        sources, (*at, "name"), f"route name {route.name!r} is used twice{where}"
                    )
                )
                continue
            seen_names[route.name] = index
        try:
            template = compile_template(route.path)
        except ValueError as exc:
            issues.append(_issue_at(sources, (*at, "path"), str(exc)))
            continue
        api = config.apis.get(route.api) if route.api is not None else None
        if route.api is not None and api is None:
            known = ", ".join(sorted(config.apis)) or "none defined"
            issues.append(
                _issue_at(sources, (*at, "api"), f"no API named {route.api!r} (known: {known})")
            )
        elif api is not None and route.version not in api.versions:
            issues.append(
                _issue_at(
                    sources,
                    (*at, "version"),
                    f"API {route.api!r} has no version {route.version!r} "
                    f"(versions: {', '.join(api.versions)})",
                )
            )
        # Header and media-type versions share a path: the version tells them apart.
        shared_path = api is not None and api.strategy != "uri"
        for method in route.methods:
            key = (template.shape, method, route.version if shared_path else None)
            if key in seen_routes:
                other = sources.locate(("routes", seen_routes[key]))
                where = f" (first at {other.file}:{other.line})" if other else ""
                issues.append(
                    _issue_at(
                        sources, (*at, "path"), f"{method} {route.path} is already routed{where}"
                    )
                )
            seen_routes[key] = index
        issues.extend(_check_route_auth(config, route, at, sources))
        issues.extend(_check_route_limit(config, route, at, sources))
        if route.validation is not None:
            for part in ("body", "query"):
                schema = getattr(route.validation, part)
                if schema is None:
                    continue
                try:
                    compile_schema(schema)
                except ValueError as exc:
                    issues.append(_issue_at(sources, (*at, "validation", part), str(exc)))
        params = set(template.params)
        if route.proxy is not None:
            if route.proxy.upstream is not None and route.proxy.upstream not in config.upstreams:
                known = ", ".join(sorted(config.upstreams)) or "none defined"
                issues.append(
                    _issue_at(
                        sources,
                        (*at, "proxy", "upstream"),
                        f"no upstream named {route.proxy.upstream!r} (known: {known})",
                    )
                )
            if route.proxy.path is not None:
                issues.extend(
                    _check_placeholders(sources, (*at, "proxy", "path"), route.proxy.path, params)
                )
        if route.fanout is not None:
            for name, backend in route.fanout.backends.items():
                issues.extend(
                    _check_placeholders(
                        sources, (*at, "fanout", "backends", name, "url"), backend.url, params
                    )
                )
    return issues


def _check_route_auth(
    config: GatewayConfig, route: RouteSpec, at: KeyPath, sources: SourceMap
) -> list[ConfigIssue]:
    issues = []
    oauth = config.auth.oauth
    if oauth.enabled and route.path in (oauth.token_path, oauth.jwks_path):
        issues.append(
            _issue_at(sources, (*at, "path"), f"{route.path} is the gateway's own OAuth endpoint")
        )
    if route.auth == "none":
        return issues
    known = set(config.auth.issuers) | ({"self"} if oauth.enabled else set())
    if "jwt" in route.auth and not known:
        issues.append(
            _issue_at(
                sources,
                (*at, "auth"),
                "`jwt` needs a trusted issuer: add one under `auth.issuers` "
                "or turn on `auth.oauth.enabled`",
            )
        )
    for name in route.issuers or ():
        if name not in known:
            listed = ", ".join(sorted(known)) or "none defined"
            issues.append(
                _issue_at(sources, (*at, "issuers"), f"no issuer named {name!r} (known: {listed})")
            )
    return issues


def _check_plans(config: GatewayConfig, sources: SourceMap) -> list[ConfigIssue]:
    plans = config.rate_limits.plans
    known = ", ".join(sorted(plans)) or "none"
    issues = []
    for consumer, contract in config.rate_limits.consumers.items():
        if contract.plan is not None and contract.plan not in plans:
            issues.append(
                _issue_at(
                    sources,
                    ("rate_limits", "consumers", consumer, "plan"),
                    f"no plan named {contract.plan!r} (known: {known})",
                )
            )
    return issues


def _check_route_limit(
    config: GatewayConfig, route: RouteSpec, at: KeyPath, sources: SourceMap
) -> list[ConfigIssue]:
    limit = route.rate_limit
    if limit is None:
        return []
    at = (*at, "rate_limit")
    plans = config.rate_limits.plans
    issues = []
    if limit.by in ("consumer", "api_key") and route.auth == "none":
        issues.append(
            _issue_at(sources, (*at, "by"), f"`by: {limit.by}` needs `auth:` on the route")
        )
    if limit.anonymous_plan is not None and limit.anonymous_plan not in plans:
        issues.append(
            _issue_at(
                sources,
                (*at, "anonymous_plan"),
                f"no plan named {limit.anonymous_plan!r} "
                f"(known: {', '.join(sorted(plans)) or 'none'})",
            )
        )
    if not limit.plan and limit.limit is None:
        issues.append(_issue_at(sources, at, "`plan: false` needs the route's own `limit:`"))
    anonymous = limit.by == "ip" or limit.by.startswith("header:")
    fallback_plan = config.auth.default_plan
    if (
        limit.plan
        and limit.limit is None
        and limit.anonymous_plan is None
        and (fallback_plan not in plans)
    ):
        # Otherwise callers whose plan is unknown (or anonymous ones) would be unlimited.
        issues.append(
            _issue_at(
                sources,
                at,
                f"callers without a known plan fall back to plan {fallback_plan!r}, which is "
                "not under `rate_limits.plans`: define it, or give the route its own `limit:`"
                + (" or an `anonymous_plan:`" if anonymous else ""),
            )
        )
    bursts: list[tuple[str, LimitSpec | ContractSpec]] = (
        [("the route's own limit", limit.limit)] if limit.limit is not None else []
    )
    if limit.plan:
        bursts += [(f"plan {name!r}", plan) for name, plan in plans.items()]
        bursts += [
            (f"the contract of {consumer!r}", contract)
            for consumer, contract in config.rate_limits.consumers.items()
        ]
    for what, spec in bursts:
        if spec.quota is not None and limit.cost > spec.quota[0]:
            issues.append(
                _issue_at(
                    sources,
                    (*at, "cost"),
                    f"cost {limit.cost} is more than the quota of {what} "
                    f"({int(spec.quota[0])}): no request could ever pass",
                )
            )
        if spec.rate is not None or spec.burst is not None:
            rate = spec.rate or (1.0, 1.0)
            burst = spec.burst or max(1, int(-(-rate[0] // rate[1])))
            if limit.cost > burst:
                issues.append(
                    _issue_at(
                        sources,
                        (*at, "cost"),
                        f"cost {limit.cost} is more than the burst of {what} ({burst}): "
                        "no request could ever pass",
                    )
                )
    return issues


def _check_placeholders(
    sources: SourceMap, at: KeyPath, text: str, params: set[str]
) -> list[ConfigIssue]:
    try:
        used = placeholders(text)
    except ValueError as exc:
        return [_issue_at(sources, at, str(exc))]
    missing = sorted(set(used) - params)
    if missing:
        return [
            _issue_at(
                sources,
                at,
                f"uses {', '.join('{' + m + '}' for m in missing)} but the route path has "
                + (", ".join("{" + p + "}" for p in sorted(params)) or "no parameters"),
            )
        ]
    return []
