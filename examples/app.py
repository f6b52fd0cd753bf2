"""The sample services' HTTP applications: generated data and the handlers serving it.

Bodies are derived only from the ids in the request (seeded generators), so the same
request always gets the same body.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from .behaviour import Behaviour, FieldError, parse_duration_s, parse_error_rate

_T = TypeVar("_T")

DEFAULT_PORTS: dict[str, int] = {
    "users": 9101,
    "orders": 9102,
    "recommendations": 9103,
    "inventory": 9104,
    "notifications": 9105,
}
KINDS: tuple[str, ...] = tuple(DEFAULT_PORTS)
CONTROL_PATH = "/_control"
MAX_ITEMS = 15  # caps list sizes so bodies stay around 2 KB at most


# --- Generated data --------------------------------------------------------------------

_FIRST = ("Ada", "Bongani", "Chen", "Diego", "Emma", "Farah", "Goran", "Hana", "Ivan", "Jun")
_LAST = ("Lovelace", "Okafor", "Wei", "Garcia", "Schmidt", "Haddad", "Novak", "Sato", "Mensah")
_COUNTRIES = ("US", "GB", "DE", "FR", "IN", "JP", "BR", "NG", "ZA", "CA", "KR", "SE")
_TIERS, _TIER_WEIGHTS = ("free", "plus", "pro", "enterprise"), (60, 25, 12, 3)
_CATEGORIES = ("BOOK", "ELEC", "HOME", "TOYS", "GARD", "SPRT")
_ORDER_STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled")
_CURRENCIES = ("USD", "EUR", "GBP")
_REASONS = ("bought_together", "similar_items", "trending", "recently_viewed")
_WAREHOUSES = ("ams-1", "fra-2", "iad-1", "sfo-3", "sin-1")
_NOTICES = {
    "order_shipped": "Your order is on its way",
    "price_drop": "An item on your wish list is cheaper",
    "security_alert": "New sign-in to your account",
    "weekly_digest": "Your weekly picks are here",
}
_EPOCH, _SPAN = 1_546_300_800, 5 * 365 * 86_400  # generated dates fall in 2019-2023


def _rng(*parts: str) -> random.Random:
    # String seeds go through SHA-512, so bodies do not vary with PYTHONHASHSEED.
    return random.Random(":".join(parts))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _past(rng: random.Random) -> str:
    return _iso(_EPOCH + rng.randrange(_SPAN))


def _sku(rng: random.Random) -> str:
    return f"{rng.choice(_CATEGORIES)}-{rng.randrange(10_000, 100_000)}"


def _price_cents(sku: str) -> int:
    # Seeded by the SKU alone, so every order of an item is priced alike.
    return _rng("price", sku).randrange(299, 20_000)


def _user(user_id: str) -> dict[str, object]:
    rng = _rng("user", user_id)
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return {
        "id": user_id,
        "name": f"{first} {last}",
        "email": f"{first}.{last}@example.com".lower(),
        "tier": rng.choices(_TIERS, _TIER_WEIGHTS)[0],
        "created_at": _past(rng),
        "country": rng.choice(_COUNTRIES),
    }


def _order(order_id: str) -> dict[str, object]:
    rng = _rng("order", order_id)
    sku, quantity = _sku(rng), rng.randint(1, 4)
    return {
        "id": order_id,
        "sku": sku,
        "quantity": quantity,
        "total_cents": quantity * _price_cents(sku),
        "currency": rng.choice(_CURRENCIES),
        "status": rng.choice(_ORDER_STATUSES),
        "placed_at": _past(rng),
    }


def _stock(sku: str) -> dict[str, object]:
    rng = _rng("stock", sku)
    available = 0 if rng.random() < 0.1 else rng.randrange(1, 500)
    return {
        "sku": sku,
        "available": available,
        "warehouse": rng.choice(_WAREHOUSES),
        "updated_at": _past(rng),
    }


# --- HTTP handlers ---------------------------------------------------------------------


@dataclass
class _State:
    kind: str
    behaviour: Behaviour
    rng: random.Random
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100_001))


_STATE = web.AppKey("state", _State)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _query(request: web.Request, name: str) -> str:
    value = request.query.get(name, "").strip()
    if not value:
        raise FieldError(name, f"query parameter {name!r} is required")
    return value


def _limit(request: web.Request, default: int) -> int:
    raw = request.query.get("limit", str(default))
    if not (raw.isdigit() and 1 <= int(raw) <= MAX_ITEMS):
        raise FieldError("limit", f"limit must be an integer from 1 to {MAX_ITEMS}, got {raw!r}")
    return int(raw)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise FieldError("body", "request body must be JSON") from None
    if not isinstance(body, dict):
        raise FieldError("body", "request body must be a JSON object")
    return body


def _require(body: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FieldError(name, f"{name!r} must be a {kind.__name__}")
    return value


def _new_id(request: web.Request, prefix: str) -> str:
    # Created objects are echoed, not stored: the services stay stateless under load.
    return f"{prefix}{next(request.app[_STATE].ids)}"


async def _get_user(request: web.Request) -> web.Response:
    return _json(_user(request.match_info["id"]))


async def _list_users(request: web.Request) -> web.Response:
    return _json({"items": [_user(str(n)) for n in range(1, _limit(request, 10) + 1)]})


async def _create_user(request: web.Request) -> web.Response:
    body = await _body(request)
    _require(body, "name", str)
    _require(body, "email", str)
    created_at = _iso(time.time())
    created = {"tier": "free", "country": "US", **body, "id": _new_id(request, "")}
    return _json(created | {"created_at": created_at}, status=201)


async def _update_user(request: web.Request) -> web.Response:
    # Stateless like the rest: answers with the stored user's fields updated by the body.
    body = await _body(request)
    return _json(_user(request.match_info["id"]) | body | {"id": request.match_info["id"]})


async def _list_orders(request: web.Request) -> web.Response:
    user_id = _query(request, "user")
    rng = _rng("orders", user_id)
    ids = [f"ord_{rng.randrange(10**7, 10**8)}" for _ in range(rng.randint(0, 5))]
    return _json({"user": user_id, "items": [_order(order_id) for order_id in ids]})


async def _get_order(request: web.Request) -> web.Response:
    return _json(_order(request.match_info["id"]))


async def _create_order(request: web.Request) -> web.Response:
    body = await _body(request)
    sku, quantity = _require(body, "sku", str), _require(body, "quantity", int)
    if quantity < 1:
        raise FieldError("quantity", "'quantity' must be at least 1")
    created = {"currency": "USD", **body, "id": _new_id(request, "ord_"), "status": "placed"}
    return _json(
        created | {"total_cents": quantity * _price_cents(sku), "placed_at": _iso(time.time())},
        status=201,
    )


async def _recommendations(request: web.Request) -> web.Response:
    user_id, limit = _query(request, "user"), _limit(request, 5)
    rng = _rng("recommendations", user_id)
    # Rank a fixed candidate list and cut it, so a smaller limit returns a prefix.
    draws = (
        (round(rng.uniform(0.2, 0.99), 3), _sku(rng), rng.choice(_REASONS))
        for _ in range(MAX_ITEMS)
    )
    ranked = sorted(draws, reverse=True)[:limit]
    items = [{"sku": sku, "score": score, "reason": reason} for score, sku, reason in ranked]
    return _json({"user": user_id, "items": items})


async def _get_stock(request: web.Request) -> web.Response:
    return _json(_stock(request.match_info["sku"]))


async def _list_stock(request: web.Request) -> web.Response:
    skus = [sku.strip() for sku in _query(request, "skus").split(",") if sku.strip()]
    if not 1 <= len(skus) <= MAX_ITEMS:
        raise FieldError("skus", f"from 1 to {MAX_ITEMS} comma-separated skus, got {len(skus)}")
    return _json({"items": [_stock(sku) for sku in skus]})


async def _list_notifications(request: web.Request) -> web.Response:
    user_id = _query(request, "user")
    rng = _rng("notifications", user_id)
    items = []
    for _ in range(rng.randint(0, 6)):
        notice = rng.choice(list(_NOTICES))
        items.append(
            {
                "id": f"ntf_{rng.randrange(10**7, 10**8)}",
                "type": notice,
                "title": _NOTICES[notice],
                "read": rng.random() < 0.6,
                "created_at": _past(rng),
            }
        )
    items.sort(key=lambda item: str(item["created_at"]), reverse=True)
    unread = sum(not item["read"] for item in items)
    return _json({"user": user_id, "unread": unread, "items": items})


async def _send_notification(request: web.Request) -> web.Response:
    _require(await _body(request), "user", str)
    return _json({"id": _new_id(request, "ntf_"), "status": "queued"}, status=202)


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "service": request.app[_STATE].kind})


def _control_field(
    body: dict[str, Any], name: str, parse: Callable[[object], float]
) -> float | None:
    if name not in body:
        return None
    try:
        return parse(body[name])
    except ValueError as exc:
        raise FieldError(name, f"{name}: {exc}") from None


async def _control(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    if request.method in ("PUT", "POST"):
        body = await _body(request)
        if unknown := sorted(body.keys() - {"latency", "p99", "error_rate"}):
            raise FieldError(unknown[0], f"unknown field {unknown[0]!r}")
        state.behaviour = state.behaviour.with_changes(
            _control_field(body, "latency", parse_duration_s),
            _control_field(body, "p99", parse_duration_s),
            _control_field(body, "error_rate", parse_error_rate),
        )
    return _json({"service": state.kind, **state.behaviour.to_json()})


_ROUTES: dict[str, list[web.RouteDef]] = {
    "users": [
        web.get("/users", _list_users),
        web.get("/users/{id}", _get_user),
        web.post("/users", _create_user),
        web.put("/users/{id}", _update_user),
    ],
    "orders": [
        web.get("/orders", _list_orders),
        web.get("/orders/{id}", _get_order),
        web.post("/orders", _create_order),
    ],
    "recommendations": [web.get("/recommendations", _recommendations)],
    "inventory": [web.get("/inventory", _list_stock), web.get("/inventory/{sku}", _get_stock)],
    "notifications": [
        web.get("/notifications", _list_notifications),
        web.post("/notifications", _send_notification),
    ],
}


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FieldError as exc:
        return _json({"error": str(exc), "field": exc.field}, status=400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _json({"error": exc.reason, "status": exc.status}, status=exc.status)
        if allow := exc.headers.get("Allow"):
            response.headers["Allow"] = allow
        return response


@web.middleware
async def _misbehave(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The control endpoint must stay usable to repair a service set to fail everything.
    if request.path == CONTROL_PATH:
        return await handler(request)
    state = request.app[_STATE]
    behaviour = state.behaviour  # a /_control change lands between requests, not within one
    # ``?delay=500ms`` slows one request only: a route can point one backend at a slow
    # variant without changing the service for everyone else.
    asked = request.query.get("delay")
    try:
        delay = parse_duration_s(asked) if asked is not None else behaviour.sample_delay(state.rng)
    except ValueError as exc:
        return _json({"error": str(exc), "field": "delay"}, status=400)
    if delay > 0:
        await asyncio.sleep(delay)
    if state.rng.random() < behaviour.error_rate:
        status = state.rng.choice((500, 503))
        return _json({"error": "injected failure", "service": state.kind}, status=status)
    return await handler(request)


def make_app(
    kind: str, behaviour: Behaviour | None = None, rng: random.Random | None = None
) -> web.Application:
    """The aiohttp application of one service kind, misbehaving as ``behaviour`` says."""
    if kind not in _ROUTES:
        raise ValueError(f"unknown service kind {kind!r}, expected one of {', '.join(KINDS)}")
    app = web.Application(middlewares=[_json_errors, _misbehave])
    app[_STATE] = _State(
        kind, Behaviour() if behaviour is None else behaviour, rng or random.Random()
    )
    app.add_routes(
        [
            web.get("/healthz", _healthz),
            web.get(CONTROL_PATH, _control),
            web.put(CONTROL_PATH, _control),
            web.post(CONTROL_PATH, _control),
            *_ROUTES[kind],
        ]
    )
    return app
