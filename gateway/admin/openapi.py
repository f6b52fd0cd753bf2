"""The OpenAPI 3.1 document of the admin API, as data, served at ``GET /openapi.json``.

A unit test holds it and the routes of the admin app to the same set of operations,
and a fuzz test (schemathesis) sends what it describes, valid and invalid, to a
running gateway: a field rule changed in ``fields.py`` changes both the handler and
this document, and a route added without its description fails a test.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import fields
from .http import json_response

Json = dict[str, Any]

_PROBLEM = "application/problem+json"


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str, schema: str = "Problem", headers: Json | None = None) -> Json:
    answer: Json = {"description": description, "content": {_PROBLEM: {"schema": _ref(schema)}}}
    if headers:
        answer["headers"] = headers
    return answer


def _error(name: str) -> Json:
    return {"$ref": f"#/components/responses/{name}"}


def _nullable(type_: str) -> Json:
    return {"type": [type_, "null"]}


def _object(properties: Json, *, required: list[str] | None = None, closed: bool = False) -> Json:
    schema: Json = {"type": "object", "properties": properties}
    schema["required"] = list(properties) if required is None else required
    if closed:
        schema["additionalProperties"] = False
    return schema


_IDENTIFIER = {"type": "string", "pattern": fields.IDENTIFIER}
_DURATION = {
    "description": "a duration (`90d`, `12h`, `30s`, `250ms`) or a number of seconds",
    "anyOf": [
        {"type": "string", "pattern": fields.DURATION},
        {"type": "number", "minimum": 0, "maximum": fields.MAX_SECONDS},
    ],
}
_SCOPES = {"type": "array", "items": _IDENTIFIER}
_CACHE_PATH = {"type": "string", "pattern": fields.CACHE_PATH}
_ANY_OBJECT: Json = {"type": "object"}
_STRINGS: Json = {"type": "array", "items": {"type": "string"}}
_COUNT: Json = {"type": "integer", "minimum": 0}
_COUNTS: Json = {"type": "object", "additionalProperties": _COUNT}
_BUCKET_COUNTS: Json = {
    "type": "array",
    "items": _COUNT,
    "description": "observations per bucket of `buckets` (not cumulative); one more"
    " count than there are bounds, the last for those past the highest",
}

_SCHEMAS: Json = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "the field at fault (422)"},
        },
    },
    "NotReady": {
        "allOf": [
            _ref("Problem"),
            {
                # A store down (``checks`` says which) or the gateway shutting down.
                "oneOf": [
                    _object({"ready": {"const": False}, "checks": _ref("Checks")}),
                    _object({"ready": {"const": False}, "draining": {"const": True}}),
                ]
            },
        ]
    },
    "Health": _object({"status": {"const": "ok"}}),
    "Check": _object({"ok": {"type": "boolean"}, "required": {"type": "boolean"}}),
    "Checks": {
        "type": "object",
        "description": "credential_store, rate_limit_store, idempotency_store, cache_bus:"
        " each present when the gateway has that store",
        "additionalProperties": _ref("Check"),
    },
    "Ready": _object({"ready": {"const": True}, "checks": _ref("Checks")}),
    "NewKey": _object(
        {
            "consumer": _IDENTIFIER,
            "plan": {**_nullable("string"), "pattern": fields.IDENTIFIER},
            "scopes": _SCOPES,
            "expires_in": _DURATION,
        },
        required=["consumer"],
        closed=True,
    ),
    "RotateKey": _object({"overlap": _DURATION}, required=[], closed=True),
    "NewClient": _object(
        {
            "consumer": _IDENTIFIER,
            "plan": {**_nullable("string"), "pattern": fields.IDENTIFIER},
            "scopes": _SCOPES,
        },
        required=["consumer"],
        closed=True,
    ),
    "Key": _object(
        {
            "key_id": {"type": "string"},
            "consumer_id": {"type": "string"},
            "scopes": _STRINGS,
            "created_at": {"type": "number"},
            "expires_at": _nullable("number"),
            "revoked_at": _nullable("number"),
            "last_used_at": _nullable("number"),
            "rotated_from": _nullable("string"),
        }
    ),
    "CreatedKey": {
        "allOf": [
            _ref("Key"),
            _object({"key": {"type": "string", "description": "the whole key, shown once"}}),
        ]
    },
    "Client": _object(
        {
            "client_id": {"type": "string"},
            "consumer_id": {"type": "string"},
            "scopes": _STRINGS,
            "created_at": {"type": "number"},
            "revoked_at": _nullable("number"),
        }
    ),
    "CreatedClient": {
        "allOf": [
            _ref("Client"),
            _object({"client_secret": {"type": "string", "description": "shown once"}}),
        ]
    },
    "Policy": _object(
        {
            "policy": {
                "type": "string",
                "description": "version, auth, validation, idempotency, rate_limit,"
                " conditional or cache, in the order requests meet them",
            },
            "settings": _ANY_OBJECT,
        }
    ),
    "Route": _object(
        {
            "name": {"type": "string"},
            "path": {"type": "string"},
            "methods": _STRINGS,
            "kind": {"enum": ["proxy", "fanout", "builtin"]},
            "budget": {"type": "number", "description": "seconds"},
            "api": _nullable("string"),
            "version": _nullable("string"),
            "policies": {"type": "array", "items": _ref("Policy")},
            "upstream": {
                "type": "object",
                "required": ["kind"],
                "properties": {"kind": {"enum": ["proxy", "fanout", "builtin"]}},
                "description": "proxy: upstream, targets, path, timeout; fanout: budget,"
                " partial_in_body, backends; builtin: endpoint",
            },
        }
    ),
    "Consumer": _object(
        {
            "id": {"type": "string"},
            "sources": {"type": "array", "items": {"enum": ["config", "store"]}},
            "plan": _nullable("string"),
            "effective_plan": {"type": "string"},
            "contract": {"type": ["object", "null"]},
            "created_at": _nullable("number"),
            "keys": _object({"live": {"type": "integer"}, "total": {"type": "integer"}}),
            "clients": _object({"live": {"type": "integer"}, "total": {"type": "integer"}}),
        }
    ),
    "BackendStats": _object(
        {
            "name": {"type": "string"},
            "calls": _COUNT,
            "duration": _BUCKET_COUNTS,
            "outcomes": {
                **_COUNTS,
                "description": "calls by outcome: ok, timeout, error, cancelled",
            },
        }
    ),
    "RouteStats": _object(
        {
            "name": {"type": "string"},
            "kind": {"enum": ["proxy", "fanout", "builtin"]},
            "budget_ms": {"type": "number"},
            "requests": _COUNT,
            "duration": _BUCKET_COUNTS,
            "statuses": {**_COUNTS, "description": "requests by status class: 2xx, 4xx..."},
            "partial": {**_COUNT, "description": "fan-out answers with a part missing"},
            "backends": {"type": "array", "items": _ref("BackendStats")},
            "cache": {**_COUNTS, "description": "cache lookups by result, as in /metrics"},
            "rate_limit": {**_COUNTS, "description": "decisions by outcome, as in /metrics"},
        }
    ),
    "Stats": _object(
        {
            "time": {"type": "number", "description": "wall-clock seconds"},
            "monotonic": {
                "type": "number",
                "description": "seconds on a monotonic clock: only differences mean anything",
            },
            "metrics": {"type": "boolean", "description": "whether requests are recorded"},
            "buckets": {
                "type": "array",
                "items": {"type": "number"},
                "description": "the duration buckets' upper bounds, in seconds",
            },
            "routes": {"type": "array", "items": _ref("RouteStats")},
        }
    ),
    "ReloadStatus": _object(
        {
            "reloads_ok": {"type": "integer"},
            "reloads_failed": {"type": "integer"},
            "last_reload_at": {**_nullable("number"), "description": "wall-clock seconds"},
            "last_error": {**_nullable("string"), "description": "null after a good reload"},
            "files": _STRINGS,
        }
    ),
}

_RESPONSES: Json = {
    "Unauthorized": _problem(
        "the admin token is missing or wrong",
        headers={"WWW-Authenticate": {"schema": {"type": "string"}}},
    ),
    "BadRequest": _problem(
        "the request could not be parsed (its framing or headers), or its body is not JSON"
    ),
    "Invalid": _problem("the body or a parameter breaks this operation's rules"),
    "NotFound": _problem("no such key or client, or no credential store"),
    "TooLarge": _problem("the body is larger than 64 KiB"),
    "StoreDown": _problem(
        "the credential store is unavailable",
        headers={"Retry-After": {"schema": {"type": "string"}}},
    ),
}


def _operation(
    summary: str,
    responses: Json,
    *,
    body: str | None = None,
    body_required: bool = True,
    parameters: list[Json] | None = None,
    public: bool = False,
) -> Json:
    # Any operation: a request aiohttp cannot parse is answered 400 before routing.
    operation: Json = {"summary": summary, "responses": {**responses, "400": _error("BadRequest")}}
    if not public:
        operation["responses"]["401"] = _error("Unauthorized")
    else:
        operation["security"] = []
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": _ref(body)}},
        }
        operation["responses"]["413"] = _error("TooLarge")
    return operation


def _path_id(name: str) -> Json:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_STORE_ERRORS = {"404": _error("NotFound"), "503": _error("StoreDown")}
_NO_CONTENT = {"204": {"description": "done"}}

_PATHS: Json = {
    "/": {
        "get": _operation(
            "The dashboard: a page that holds no data and asks `/admin/stats` with the"
            " token from its URL fragment (no token)",
            {
                "200": {
                    "description": "the page",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
            public=True,
        )
    },
    "/healthz": {
        "get": _operation(
            "Liveness: 200 while the process answers (no token)",
            {"200": _json(_ref("Health"), "alive")},
            public=True,
        )
    },
    "/readyz": {
        "get": _operation(
            "Readiness: 503 while a store the current routes need is down, or while the"
            " gateway shuts down (no token)",
            {
                "200": _json(_ref("Ready"), "ready"),
                "503": _problem(
                    "not ready; `checks` says which store is down, or `draining` that the"
                    " gateway is shutting down",
                    "NotReady",
                    {"Retry-After": {"schema": {"type": "string"}}},
                ),
            },
            public=True,
        )
    },
    "/openapi.json": {
        "get": _operation("This document", {"200": _json(_ANY_OBJECT, "OpenAPI 3.1")})
    },
    "/metrics": {
        "get": _operation(
            "Prometheus metrics: text exposition, or OpenMetrics when the Accept header"
            " asks for it",
            {
                "200": {
                    "description": "the metrics",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}},
                    },
                }
            },
        )
    },
    "/admin/stats": {
        "get": _operation(
            "Every route's figures since the process started (counts, duration"
            " histograms), for the dashboard to take differences of",
            {"200": _json(_ref("Stats"), "the figures")},
        )
    },
    "/admin/routes": {
        "get": _operation(
            "Routes with their compiled policy chains and upstreams",
            {
                "200": _json(
                    _object({"routes": {"type": "array", "items": _ref("Route")}}), "the routes"
                )
            },
        )
    },
    "/admin/consumers": {
        "get": _operation(
            "Consumers from the config (contracts) and the credential store, with plans",
            {
                "200": _json(
                    _object(
                        {
                            "default_plan": {"type": "string"},
                            "plans": _ANY_OBJECT,
                            "credential_store": {"type": "boolean"},
                            "consumers": {"type": "array", "items": _ref("Consumer")},
                        }
                    ),
                    "the consumers",
                ),
                "503": _error("StoreDown"),
            },
        )
    },
    "/admin/config": {
        "get": _operation(
            "The config serving now, credentials in URLs masked, and its files",
            {"200": _json(_object({"files": _STRINGS, "config": _ANY_OBJECT}), "the config")},
        )
    },
    "/admin/reload": {
        "get": _operation(
            "Reload counts, time and the last error",
            {"200": _json(_ref("ReloadStatus"), "reload status")},
        ),
        "post": _operation(
            "Reload the config files now; a refused config leaves the old one serving",
            {
                "200": _json(
                    _object({"reloaded": {"const": True}, "routes": {"type": "integer"}}),
                    "the new config serves",
                ),
                "422": _problem("the config was refused; `detail` says where and why"),
                "503": _problem("the gateway is shutting down"),
            },
        ),
    },
    "/admin/keys": {
        "get": _operation(
            "API keys (never secrets or hashes)",
            {
                "200": _json(
                    _object({"keys": {"type": "array", "items": _ref("Key")}}), "the keys"
                ),
                **_STORE_ERRORS,
            },
            parameters=[
                {
                    "name": "consumer",
                    "in": "query",
                    "required": False,
                    "description": "only this consumer's keys",
                    "schema": {"type": "string"},
                }
            ],
        ),
        "post": _operation(
            "Create an API key; the answer holds the key, once",
            {
                "201": _json(_ref("CreatedKey"), "created"),
                "422": _error("Invalid"),
                **_STORE_ERRORS,
            },
            body="NewKey",
        ),
    },
    "/admin/keys/{key_id}/rotate": {
        "post": _operation(
            "A new key for the same consumer; the old one works for `overlap` (1d)",
            {
                "201": _json(_ref("CreatedKey"), "the new key"),
                "422": _error("Invalid"),
                **_STORE_ERRORS,
            },
            body="RotateKey",
            body_required=False,
            parameters=[_path_id("key_id")],
        )
    },
    "/admin/keys/{key_id}": {
        "delete": _operation(
            "Revoke a key, at once on this node",
            {**_NO_CONTENT, **_STORE_ERRORS},
            parameters=[_path_id("key_id")],
        )
    },
    "/admin/clients": {
        "get": _operation(
            "OAuth clients (never secrets or hashes)",
            {
                "200": _json(
                    _object({"clients": {"type": "array", "items": _ref("Client")}}),
                    "the clients",
                ),
                **_STORE_ERRORS,
            },
        ),
        "post": _operation(
            "Create an OAuth client; the answer holds its secret, once",
            {
                "201": _json(_ref("CreatedClient"), "created"),
                "422": _error("Invalid"),
                **_STORE_ERRORS,
            },
            body="NewClient",
        ),
    },
    "/admin/clients/{client_id}": {
        "delete": _operation(
            "Revoke an OAuth client",
            {**_NO_CONTENT, **_STORE_ERRORS},
            parameters=[_path_id("client_id")],
        )
    },
    "/admin/cache": {
        "delete": _operation(
            "Purge cached responses by exact path or by path prefix, on every node",
            {
                "200": _json(_object({"purged": {"type": "integer"}}), "entries dropped"),
                "404": _problem("this gateway has no response cache"),
                "422": _error("Invalid"),
            },
            parameters=[
                {
                    # Exactly one of ?path= and ?prefix=: one parameter object whose
                    # properties are the query's names (form style, exploded).
                    "name": "target",
                    "in": "query",
                    "required": True,
                    "style": "form",
                    "explode": True,
                    "schema": {
                        "oneOf": [
                            _object({"path": _CACHE_PATH}, closed=True),
                            _object({"prefix": _CACHE_PATH}, closed=True),
                        ]
                    },
                }
            ],
        )
    },
}

DOCUMENT: Json = {
    "openapi": "3.1.0",
    "info": {
        "title": "gateway admin API",
        "version": "1",
        "description": "On the admin listener (localhost by default). Every operation"
        " needs `Authorization: Bearer <admin token>` except the probes `/healthz` and"
        " `/readyz` and the dashboard page `/`. Every error is `application/problem+json`.",
    },
    "security": [{"adminToken": []}],
    "paths": _PATHS,
    "components": {
        "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
    },
}


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(DOCUMENT)
