"""The admin API: API keys and OAuth clients (the same operations as the CLI).

Every request needs ``Authorization: Bearer <admin token>``, compared in constant time.
Revocations through this API take effect at once on this node (the key cache entry is
dropped), unlike the CLI's, which wait out the cache TTL.

    GET    /admin/keys[?consumer=ID]        list keys (never secrets)
    POST   /admin/keys                      {"consumer", "plan"?, "scopes"?, "expires_in"?}
    POST   /admin/keys/{key_id}/rotate      {"overlap"?}
    DELETE /admin/keys/{key_id}             revoke
    GET    /admin/clients
    POST   /admin/clients                   {"consumer", "plan"?, "scopes"?}
    DELETE /admin/clients/{client_id}       revoke
    DELETE /admin/cache?path=P | ?prefix=P   purge cached responses (every scope and variant)
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from ..config.model import AdminSpec
from ..config.units import parse_duration
from ..context import Clock
from ..errors import problem_body
from ..policies.auth import manage
from ..policies.auth.secrets import write_private_file
from ..policies.auth.services import AuthServices
from ..policies.cache.policy import ResponseCache
from ..stores.base import ApiKeyRecord, ClientRecord, StoreError

_SERVICES = web.AppKey("services", AuthServices)
_CLOCK = web.AppKey("clock", Clock)
_TOKEN = web.AppKey("token", str)
_CACHE = web.AppKey("cache", ResponseCache)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    return path.read_text().strip()


def _problem(status: int, title: str, detail: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=problem_body(status, title, "admin-" + title.lower().replace(" ", "-"), detail, None),
        content_type="application/problem+json",
        headers=headers,
    )


@web.middleware
async def _require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("Authorization", "")
    expected = "Bearer " + request.app[_TOKEN]
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return _problem(
            401,
            "Unauthorized",
            "the admin token is missing or wrong",
            **{"WWW-Authenticate": 'Bearer realm="gateway-admin"'},
        )
    try:
        return await handler(request)
    except StoreError:
        return _problem(
            503, "Unavailable", "the credential store is unavailable", **{"Retry-After": "1"}
        )


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read()) if request.can_read_body else {}
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(reason="the body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    return body


def _field_error(field: str, message: str) -> web.Response:
    return _problem(422, "Invalid field", f"{field}: {message}")


def _scopes(body: dict[str, Any]) -> tuple[str, ...] | None:
    scopes = body.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
        return None
    return tuple(scopes)


def _owner_fields(body: dict[str, Any]) -> tuple[str, str | None, tuple[str, ...]] | web.Response:
    """(consumer, plan, scopes) of a new key or client, or the 422 naming what is wrong."""
    consumer = body.get("consumer")
    if not isinstance(consumer, str) or not consumer:
        return _field_error("consumer", "required, a non-empty string")
    plan = body.get("plan")
    if plan is not None and not isinstance(plan, str):
        return _field_error("plan", "must be a string")
    scopes = _scopes(body)
    if scopes is None:
        return _field_error("scopes", "must be a list of non-empty strings")
    return consumer, plan, scopes


def _duration(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            return None
    return None


def _key_json(record: ApiKeyRecord) -> dict[str, Any]:
    data = asdict(record)
    del data["secret_hash"], data["pepper_version"]
    return data


def _client_json(record: ClientRecord) -> dict[str, Any]:
    data = asdict(record)
    del data["secret_hash"], data["pepper_version"]
    return data


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def list_keys(request: web.Request) -> web.Response:
    services = request.app[_SERVICES]
    records = await services.store.list_api_keys(request.query.get("consumer"))
    return _json({"keys": [_key_json(record) for record in records]})


async def create_key(request: web.Request) -> web.Response:
    services, clock = request.app[_SERVICES], request.app[_CLOCK]
    body = await _body(request)
    fields = _owner_fields(body)
    if isinstance(fields, web.Response):
        return fields
    consumer, plan, scopes = fields
    expires_in = None
    if "expires_in" in body:
        expires_in = _duration(body["expires_in"])
        if expires_in is None:
            return _field_error("expires_in", "a duration such as 90d, 12h or seconds")
    created = await manage.create_api_key(
        services.store,
        services.peppers,
        clock,
        consumer_id=consumer,
        plan=plan,
        scopes=scopes,
        expires_in=expires_in,
    )
    return _json({"key": created.key, **_key_json(created.record)}, status=201)


async def rotate_key(request: web.Request) -> web.Response:
    services, clock = request.app[_SERVICES], request.app[_CLOCK]
    body = await _body(request)
    overlap = _duration(body.get("overlap", 86400))
    if overlap is None:
        return _field_error("overlap", "a duration such as 1d, 12h or seconds")
    key_id = request.match_info["key_id"]
    created = await manage.rotate_api_key(
        services.store, services.peppers, clock, key_id, overlap=overlap
    )
    if created is None:
        return _problem(404, "Not found", f"no live key {key_id}")
    services.api_keys.invalidate(key_id)
    return _json({"key": created.key, **_key_json(created.record)}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    services, clock = request.app[_SERVICES], request.app[_CLOCK]
    key_id = request.match_info["key_id"]
    revoked = await services.store.revoke_api_key(key_id, clock.wall())
    services.api_keys.invalidate(key_id)
    if not revoked:
        return _problem(404, "Not found", f"no live key {key_id}")
    return web.Response(status=204)


async def list_clients(request: web.Request) -> web.Response:
    records = await request.app[_SERVICES].store.list_clients()
    return _json({"clients": [_client_json(record) for record in records]})


async def create_client(request: web.Request) -> web.Response:
    services, clock = request.app[_SERVICES], request.app[_CLOCK]
    body = await _body(request)
    fields = _owner_fields(body)
    if isinstance(fields, web.Response):
        return fields
    consumer, plan, scopes = fields
    created = await manage.create_client(
        services.store, services.peppers, clock, consumer_id=consumer, plan=plan, scopes=scopes
    )
    return _json({"client_secret": created.secret, **_client_json(created.record)}, status=201)


async def revoke_client(request: web.Request) -> web.Response:
    services, clock = request.app[_SERVICES], request.app[_CLOCK]
    client_id = request.match_info["client_id"]
    if not await services.store.revoke_client(client_id, clock.wall()):
        return _problem(404, "Not found", f"no live client {client_id}")
    return web.Response(status=204)


async def purge_cache(request: web.Request) -> web.Response:
    cache = request.app[_CACHE]
    path = request.query.get("path")
    prefix = request.query.get("prefix")
    if (path is None) == (prefix is None):
        return _field_error("query", "give exactly one of ?path= or ?prefix=")
    if path is not None:
        dropped = cache.invalidate([path])
    else:
        assert prefix is not None
        dropped = cache.store.purge_prefix(prefix)
    return _json({"purged": dropped})


def admin_app(
    services: AuthServices, clock: Clock, token: str, cache: ResponseCache | None = None
) -> web.Application:
    app = web.Application(middlewares=[_require_token], client_max_size=64 * 1024)
    app[_SERVICES] = services
    if cache is not None:
        app[_CACHE] = cache
        app.router.add_delete("/admin/cache", purge_cache)
    app[_CLOCK] = clock
    app[_TOKEN] = token
    app.router.add_get("/admin/keys", list_keys)
    app.router.add_post("/admin/keys", create_key)
    app.router.add_post("/admin/keys/{key_id}/rotate", rotate_key)
    app.router.add_delete("/admin/keys/{key_id}", revoke_key)
    app.router.add_get("/admin/clients", list_clients)
    app.router.add_post("/admin/clients", create_client)
    app.router.add_delete("/admin/clients/{client_id}", revoke_client)
    return app
