"""Sample downstream services to run the gateway in front of.

Five kinds of service (users, orders, recommendations, inventory, notifications) answer
JSON derived only from the ids in the request, so the same request always gets the same
body. Each service also has a latency distribution and an error rate, set from the
command line and changeable at run time through ``/_control``, which is how the
gateway's timeouts, retries and fan-out budgets are exercised by hand:

    python -m examples.services --latency orders=500ms --error-rate inventory=0.1
    curl -X PUT localhost:9102/_control -d '{"latency": "50ms", "p99": "2s"}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

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

_Z99 = 2.3263478740408408  # 99th percentile of the standard normal distribution
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*", re.IGNORECASE)


class FieldError(ValueError):
    """A bad value for a named field, answered as a 400 that names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_duration_ms(value: object) -> float:
    """Milliseconds from a number of milliseconds or a string like "500ms", "1.5s" or "20"."""
    if isinstance(value, bool):  # bool is an int subclass, but never a duration
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        ms = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        ms = float(match[1]) * (1000.0 if (match[2] or "").lower() == "s" else 1.0)
    else:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 1.5s or milliseconds)")
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"duration must be finite and >= 0, got {value!r}")
    return ms


def parse_error_rate(value: object) -> float:
    """A fraction of requests, from 0 to 1, given as a number or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a fraction: {value!r}")
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"not a fraction: {value!r}") from None
    if not 0.0 <= rate <= 1.0:  # also rejects nan
        raise ValueError(f"error rate must be from 0 to 1, got {value!r}")
    return rate


def _seconds(value: object) -> float:
    return parse_duration_ms(value) / 1000.0


def _fmt_duration(seconds: float) -> str:
    # Same syntax parse_duration_ms reads, so GET /_control output can be PUT back.
    return f"{seconds * 1000:g}ms"


@dataclass(frozen=True)
class Behaviour:
    """How a service misbehaves: a log-normal added latency and a rate of 5xx answers.

    The latency is the log-normal whose median is ``median_s`` and whose 99th percentile
    is ``p99_s``; a median of 0 adds no delay. Invalid values raise FieldError naming
    the field as the control endpoint spells it (latency, p99, error_rate).
    """

    median_s: float = 0.0
    p99_s: float = 0.0
    error_rate: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median_s) and self.median_s >= 0):
            raise FieldError("latency", f"latency must be finite and >= 0, got {self.median_s}s")
        if not (math.isfinite(self.p99_s) and self.p99_s >= self.median_s):
            p99, median = _fmt_duration(self.p99_s), _fmt_duration(self.median_s)
            raise FieldError("p99", f"p99 ({p99}) must be >= latency ({median})")
        if not 0.0 <= self.error_rate <= 1.0:
            raise FieldError("error_rate", f"error_rate must be from 0 to 1, got {self.error_rate}")

    def with_changes(
        self,
        median_s: float | None = None,
        p99_s: float | None = None,
        error_rate: float | None = None,
    ) -> Behaviour:
        """A copy with the given values replaced.

        A new median without a new p99 scales p99 along, so the distribution keeps its
        shape and changing the median back restores it; a zero median has no shape, so
        p99 then becomes the new median.
        """
        if median_s is not None and p99_s is None:
            spread = self.p99_s / self.median_s if self.median_s > 0 else 1.0
            p99_s = median_s * spread
        return Behaviour(
            self.median_s if median_s is None else median_s,
            self.p99_s if p99_s is None else p99_s,
            self.error_rate if error_rate is None else error_rate,
        )

    def sample_delay(self, rng: random.Random) -> float:
        if self.median_s == 0:
            return 0.0
        sigma = math.log(self.p99_s / self.median_s) / _Z99
        return rng.lognormvariate(math.log(self.median_s), sigma)

    def to_json(self) -> dict[str, object]:
        return {
            "latency": _fmt_duration(self.median_s),
            "p99": _fmt_duration(self.p99_s),
            "error_rate": self.error_rate,
        }


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
            _control_field(body, "latency", _seconds),
            _control_field(body, "p99", _seconds),
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
        delay = _seconds(asked) if asked is not None else behaviour.sample_delay(state.rng)
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


# --- Running ---------------------------------------------------------------------------


@dataclass
class ServiceGroup:
    """Services running in the current event loop, with the port each one is bound to."""

    host: str
    ports: dict[str, int] = field(default_factory=dict)
    _runners: list[web.AppRunner] = field(default_factory=list, repr=False)

    def url(self, kind: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.ports[kind]}"

    async def close(self) -> None:
        while self._runners:
            await self._runners.pop().cleanup()


async def start_services(
    host: str,
    ports: dict[str, int],
    behaviours: dict[str, Behaviour] | None = None,
    seed: int | None = None,
) -> ServiceGroup:
    """Start the services named in ``ports`` (port 0 picks a free one) on ``host``.

    Kinds without a behaviour add no latency and no errors.
    """
    behaviours = behaviours or {}
    group = ServiceGroup(host)
    try:
        for kind, port in ports.items():
            # One generator per service, so traffic to one does not shift another's samples.
            rng = random.Random(None if seed is None else f"{seed}:{kind}")
            # No access log: these are load-test targets and the gateway logs requests itself.
            runner = web.AppRunner(make_app(kind, behaviours.get(kind), rng), access_log=None)
            await runner.setup()
            group._runners.append(runner)
            await web.TCPSite(runner, host, port).start()
            group.ports[kind] = runner.addresses[0][1]
    except BaseException:
        await group.close()
        raise
    return group


def _arg_type(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    # argparse shows an ArgumentTypeError's message, but only a generic one for ValueError.
    def convert(text: str) -> _T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _per_kind(parse: Callable[[str], _T]) -> Callable[[str], tuple[str, _T]]:
    def split(text: str) -> tuple[str, _T]:
        kind, _, value = text.partition("=")
        if kind not in DEFAULT_PORTS:
            raise ValueError(f"expected KIND=VALUE with KIND one of {', '.join(KINDS)}: {text!r}")
        return kind, parse(value)

    return _arg_type(split)


def _kinds(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    if not kinds or not set(kinds) <= set(KINDS):
        raise ValueError(f"expected kinds among {', '.join(KINDS)}: {text!r}")
    return kinds


def _port(text: str) -> int:
    if not (text.isdigit() and int(text) <= 65_535):
        raise ValueError(f"not a port number: {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags read by run_from_args to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument(
        "--only",
        type=_arg_type(_kinds),
        metavar="KIND[,KIND]",
        help=f"start only these services, among {', '.join(KINDS)} (default: all)",
    )
    per_kind = (
        ("--port", _port, "KIND=PORT", "listen port of a service, 0 for any free one"),
        ("--latency", _seconds, "KIND=DURATION", "median added latency, e.g. orders=500ms"),
        ("--p99", _seconds, "KIND=DURATION", "99th percentile latency, e.g. orders=2s"),
        ("--error-rate", parse_error_rate, "KIND=FRACTION", "share of 5xx answers, e.g. users=0.1"),
    )
    for flag, parse, metavar, help_text in per_kind:
        parser.add_argument(
            flag,
            action="append",
            type=_per_kind(parse),
            metavar=metavar,
            help=f"{help_text} (repeatable)",
        )
    parser.add_argument(
        "--default-latency",
        type=_arg_type(_seconds),
        default="3ms",
        metavar="DURATION",
        help="median latency of services without --latency (%(default)s)",
    )
    parser.add_argument(
        "--default-p99",
        type=_arg_type(_seconds),
        default="8ms",
        metavar="DURATION",
        help="p99 latency of services without --latency or --p99 (%(default)s); "
        "a --latency alone scales it in proportion",
    )
    parser.add_argument("--seed", type=int, help="seed latency and error sampling")


def behaviours_from_args(args: argparse.Namespace) -> dict[str, Behaviour]:
    """The behaviour of every kind; FieldError (a ValueError) if latency and p99 conflict."""
    # --default-p99 has a default of its own, which must not reject a raised --default-latency.
    default = Behaviour(args.default_latency, max(args.default_p99, args.default_latency))
    latency, p99, error_rate = (
        dict(flag or ()) for flag in (args.latency, args.p99, args.error_rate)
    )
    behaviours = {}
    for kind in KINDS:
        try:
            behaviours[kind] = default.with_changes(
                latency.get(kind), p99.get(kind), error_rate.get(kind)
            )
        except FieldError as exc:
            raise FieldError(exc.field, f"{kind}: {exc}") from None
    return behaviours


async def run_from_args(args: argparse.Namespace) -> None:
    """Start the services and print their URLs, then serve until cancelled."""
    overrides = dict(args.port or ())
    ports = {kind: overrides.get(kind, DEFAULT_PORTS[kind]) for kind in args.only or KINDS}
    group = await start_services(args.host, ports, behaviours_from_args(args), args.seed)
    try:
        width = max(map(len, ports))
        for kind in ports:
            print(f"{kind:<{width}}  {group.url(kind)}", flush=True)
        # The caller owns signal handling and stops the services by cancelling this task.
        await asyncio.Event().wait()
    finally:
        await group.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.services", description="Run the sample downstream services."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:  # report conflicting flags as a usage error rather than a traceback
        behaviours_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_from_args(args))


if __name__ == "__main__":
    main()
