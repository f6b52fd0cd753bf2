"""API keys and OAuth clients: the same operations as ``gateway keys`` and ``gateway clients``.

Revocations and rotations through the admin API take effect at once on this node (the
key's cache entry is dropped), unlike the CLI's, which wait out ``auth.cache_ttl``.
Listings never hold a secret or a hash; a created key or client secret is in the answer
to its creation, once.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from ..policies.auth import manage
from ..policies.auth.services import AuthServices
from ..stores.base import ApiKeyRecord, ClientRecord
from . import fields
from .http import AdminProblem, allow_only, json_response, read_object
from .view import GATEWAY

_NEW_OWNER = frozenset({"consumer", "plan", "scopes"})
_NEW_KEY = _NEW_OWNER | {"expires_in"}
_ROTATE = frozenset({"overlap"})
_DEFAULT_OVERLAP = 86400.0


def _services(request: web.Request) -> AuthServices:
    services = request.app[GATEWAY].auth
    if services is None:
        raise AdminProblem(
            404,
            "No credential store",
            "this gateway has no credential store: keys and clients need `auth:` settings "
            "and the admin API or an authenticating route at start",
        )
    return services


def _public(record: ApiKeyRecord | ClientRecord) -> dict[str, Any]:
    data = asdict(record)
    del data["secret_hash"], data["pepper_version"]
    return data


async def list_keys(request: web.Request) -> web.Response:
    records = await _services(request).store.list_api_keys(request.query.get("consumer"))
    return json_response({"keys": [_public(record) for record in records]})


async def create_key(request: web.Request) -> web.Response:
    services = _services(request)
    gateway = request.app[GATEWAY]
    body = await read_object(request)
    allow_only(body, _NEW_KEY)
    consumer = fields.identifier(body, "consumer", required=True)
    assert consumer is not None
    created = await manage.create_api_key(
        services.store,
        services.peppers,
        gateway.clock,
        consumer_id=consumer,
        plan=fields.identifier(body, "plan", required=False),
        default_plan=gateway.runtime.config.auth.default_plan,
        scopes=fields.scopes(body),
        expires_in=fields.duration(body, "expires_in", None),
    )
    return json_response({"key": created.key, **_public(created.record)}, status=201)


async def rotate_key(request: web.Request) -> web.Response:
    services = _services(request)
    body = await read_object(request)
    allow_only(body, _ROTATE)
    overlap = fields.duration(body, "overlap", _DEFAULT_OVERLAP)
    assert overlap is not None
    key_id = request.match_info["key_id"]
    created = await manage.rotate_api_key(
        services.store, services.peppers, request.app[GATEWAY].clock, key_id, overlap=overlap
    )
    if created is None:
        raise AdminProblem(404, "Not found", f"no live key {key_id}")
    services.api_keys.invalidate(key_id)
    return json_response({"key": created.key, **_public(created.record)}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    services = _services(request)
    key_id = request.match_info["key_id"]
    revoked = await services.store.revoke_api_key(key_id, request.app[GATEWAY].clock.wall())
    services.api_keys.invalidate(key_id)
    if not revoked:
        raise AdminProblem(404, "Not found", f"no live key {key_id}")
    return web.Response(status=204)


async def list_clients(request: web.Request) -> web.Response:
    records = await _services(request).store.list_clients()
    return json_response({"clients": [_public(record) for record in records]})


async def create_client(request: web.Request) -> web.Response:
    services = _services(request)
    gateway = request.app[GATEWAY]
    body = await read_object(request)
    allow_only(body, _NEW_OWNER)
    consumer = fields.identifier(body, "consumer", required=True)
    assert consumer is not None
    created = await manage.create_client(
        services.store,
        services.peppers,
        gateway.clock,
        consumer_id=consumer,
        plan=fields.identifier(body, "plan", required=False),
        default_plan=gateway.runtime.config.auth.default_plan,
        scopes=fields.scopes(body),
    )
    return json_response({"client_secret": created.secret, **_public(created.record)}, status=201)


async def revoke_client(request: web.Request) -> web.Response:
    services = _services(request)
    client_id = request.match_info["client_id"]
    if not await services.store.revoke_client(client_id, request.app[GATEWAY].clock.wall()):
        raise AdminProblem(404, "Not found", f"no live client {client_id}")
    return web.Response(status=204)
