"""Operations on the running gateway: config reload and cache purge."""

from __future__ import annotations

from aiohttp import web

from . import fields
from .http import AdminProblem, invalid, json_response
from .redact import scrub
from .view import GATEWAY


async def reload_status(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return json_response(
        {
            "reloads_ok": gateway.reloads_ok,
            "reloads_failed": gateway.reloads_failed,
            "last_reload_at": gateway.last_reload_at,
            "last_error": _error(gateway.last_reload_error),
            "files": list(gateway.runtime.files),
        }
    )


async def reload(request: web.Request) -> web.Response:
    """Reload now, as SIGHUP does; a refused config leaves the running one serving."""
    gateway = request.app[GATEWAY]
    if not await gateway.reload():
        if gateway.draining:
            raise AdminProblem(
                503,
                "Shutting down",
                "the gateway is shutting down: it takes no reloads",
                extra={"reloaded": False},
            )
        raise AdminProblem(
            422,
            "Config refused",
            _error(gateway.last_reload_error) or "the config was refused",
            extra={"reloaded": False},
        )
    return json_response({"reloaded": True, "routes": len(gateway.runtime.routes)})


def _error(text: str | None) -> str | None:
    # A validation error may quote the value it refused, a URL with its password.
    return scrub(text) if text is not None else None


_PURGE_PARAMETERS = frozenset({"path", "prefix"})


async def purge_cache(request: web.Request) -> web.Response:
    """Drop cached responses by path (every scope and variant) or by path prefix, on
    every node through the invalidation bus. ``purged`` counts this node's entries."""
    cache = request.app[GATEWAY].cache
    if cache is None:
        raise AdminProblem(404, "No cache", "this gateway has no response cache")
    unknown = sorted(set(request.query) - _PURGE_PARAMETERS)
    if unknown:
        raise invalid("query", f"unknown parameter {unknown[0]!r}; give ?path= or ?prefix=")
    path = request.query.get("path")
    prefix = request.query.get("prefix")
    if (path is None) == (prefix is None):
        raise invalid("query", "give exactly one of ?path= or ?prefix=")
    given = path if path is not None else prefix
    assert given is not None
    if not given.startswith(fields.CACHE_PATH[1:]):
        raise invalid("path" if path is not None else "prefix", "a request path, starting with /")
    dropped = cache.invalidate([given]) if path is not None else cache.purge_prefix(given)
    return json_response({"purged": dropped})
