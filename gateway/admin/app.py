"""The admin listener's aiohttp app: routes, the token check, and problem answers.

Every request needs ``Authorization: Bearer <admin token>``, compared in constant time,
except the probes ``/healthz`` and ``/readyz``: orchestrators call those without
credentials, and they tell only "up" or "down" and the names of the gateway's stores.
The dashboard page at ``/`` needs no token either: it is a static page that holds no
data, and its script sends the token to ``/admin/stats``. Unknown paths need the token
too, so that without it nothing about the API is learnt.

    GET    /                                  the dashboard page (no token)
    GET    /healthz /readyz                   probes (no token)
    GET    /openapi.json                      the OpenAPI document of this API
    GET    /metrics                           Prometheus metrics (gateway/metrics/)
    GET    /admin/stats                       cumulative figures per route, for the dashboard
    GET    /admin/routes                      routes, compiled policy chains, upstreams
    GET    /admin/consumers                   consumers from the config and the store
    GET    /admin/config                      the config serving now, credentials masked
    GET    /admin/reload                      reload counts and the last error
    POST   /admin/reload                      reload now (422 if refused)
    GET    /admin/keys[?consumer=ID]          list keys (never secrets)
    POST   /admin/keys                        {"consumer", "plan"?, "scopes"?, "expires_in"?}
    POST   /admin/keys/{key_id}/rotate        {"overlap"?}
    DELETE /admin/keys/{key_id}               revoke
    GET    /admin/clients
    POST   /admin/clients                     {"consumer", "plan"?, "scopes"?}
    DELETE /admin/clients/{client_id}         revoke
    DELETE /admin/cache?path=P | ?prefix=P    purge cached responses
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ..config.model import AdminSpec
from ..policies.auth.secrets import write_private_file
from ..stores.base import StoreError
from . import consumers, credentials, dashboard, health, introspection, openapi, operations, stats
from .health import READINESS, Readiness
from .http import AdminProblem, problem
from .view import GATEWAY

if TYPE_CHECKING:
    from ..server import Gateway

log = logging.getLogger("gateway.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Bodies are small JSON objects.
MAX_BODY = 64 * 1024

#: (method, path, handler): the API, one line per operation.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/", dashboard.dashboard),
    ("GET", "/healthz", health.healthz),
    ("GET", "/readyz", health.readyz),
    ("GET", "/openapi.json", openapi.openapi_json),
    ("GET", "/admin/stats", stats.show_stats),
    ("GET", "/admin/routes", introspection.list_routes),
    ("GET", "/admin/consumers", consumers.list_consumers),
    ("GET", "/admin/config", introspection.show_config),
    ("GET", "/admin/reload", operations.reload_status),
    ("POST", "/admin/reload", operations.reload),
    ("GET", "/admin/keys", credentials.list_keys),
    ("POST", "/admin/keys", credentials.create_key),
    ("POST", "/admin/keys/{key_id}/rotate", credentials.rotate_key),
    ("DELETE", "/admin/keys/{key_id}", credentials.revoke_key),
    ("GET", "/admin/clients", credentials.list_clients),
    ("POST", "/admin/clients", credentials.create_client),
    ("DELETE", "/admin/clients/{client_id}", credentials.revoke_client),
    ("DELETE", "/admin/cache", operations.purge_cache),
)

#: Paths answered without the token: the probes, and the dashboard page (no data in it).
PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz"})

_TOKEN: web.AppKey[bytes] = web.AppKey("token")


def admin_token(spec: AdminSpec, base_dir: Path) -> str:
    """The token from the environment, else from the token file (made on first run)."""
    from_env = os.environ.get(spec.token_env)
    if from_env:
        return from_env
    path = Path(spec.token_file)
    path = path if path.is_absolute() else base_dir / path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(path, (secrets.token_urlsafe(32) + "\n").encode())
    token = path.read_text().strip()
    if not token:
        # An empty token would let "Authorization: Bearer " in.
        raise ValueError(f"the admin token file {path} is empty")
    return token


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as problem+json: ours, aiohttp's (404, 405, 413) and the unexpected."""
    try:
        return await handler(request)
    except AdminProblem as error:
        return problem(
            error.status, error.title, error.detail, headers=error.headers, extra=error.extra
        )
    except StoreError:
        return problem(
            503,
            "Unavailable",
            "the credential store is unavailable",
            headers={"Retry-After": "1"},
        )
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        detail = {
            404: f"no admin operation at {request.path}",
            405: f"{request.method} is not allowed here",
            413: f"the body is larger than {MAX_BODY} bytes",
        }.get(error.status, error.reason)
        return problem(error.status, error.reason, detail, headers=headers)
    except Exception:
        log.exception("admin API error on %s %s", request.method, request.path)
        return problem(500, "Internal error", "unexpected error in the admin API")


@web.middleware
async def _require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    given = credentials.strip().encode("utf-8", "surrogateescape")
    # The scheme is case-insensitive (RFC 9110 section 11.1); the token is compared in
    # constant time whatever the scheme, so timing tells nothing about either.
    matches = hmac.compare_digest(given, request.app[_TOKEN])
    if not (matches and scheme.lower() == "bearer"):
        return problem(
            401,
            "Unauthorized",
            "the admin token is missing or wrong",
            headers={"WWW-Authenticate": 'Bearer realm="gateway-admin"'},
        )
    return await handler(request)


def admin_app(gateway: Gateway, token: str, *, metrics: Handler | None = None) -> web.Application:
    """The admin app; ``metrics`` is the ``GET /metrics`` handler (Prometheus), mounted
    here so that this module registers every route the OpenAPI document describes."""
    app = web.Application(middlewares=[_problems, _require_token], client_max_size=MAX_BODY)
    app[GATEWAY] = gateway
    app[_TOKEN] = token.encode()
    readiness = Readiness(gateway, gateway.runtime.config)
    app[READINESS] = readiness

    async def close_readiness(app: web.Application) -> None:
        await readiness.close()

    app.on_cleanup.append(close_readiness)
    routes = ROUTES + ((("GET", "/metrics", metrics),) if metrics is not None else ())
    for method, path, handler in routes:
        # No implicit HEAD: the document lists every operation there is.
        app.router.add_route(method, path, handler)
    return app
