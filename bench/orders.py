"""k to n: the POST bodies, n's schema and its validator timed alone, wrk's Lua scripts,
and the orders service's own count of the orders it made."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.probes import post
from bench.variants import MICRO_REPEAT_S, MICRO_REPEATS, ORDERS_PATH

#: k's and l's body, about 100 bytes: what the orders service needs (sku, quantity)
#: and a little more.
SMALL_ORDER: dict[str, Any] = {
    "sku": "BOOK-12345",
    "quantity": 2,
    "currency": "EUR",
    "note": "leave the parcel with the concierge",
}

_ADDRESS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["line1", "city", "postal_code", "country"],
    "additionalProperties": False,
    "properties": {
        "line1": {"type": "string", "minLength": 1, "maxLength": 100},
        "line2": {"type": "string", "maxLength": 100},
        "city": {"type": "string", "minLength": 1, "maxLength": 60},
        "postal_code": {"type": "string", "pattern": "^[A-Z0-9][A-Z0-9 -]{2,9}$"},
        "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
    },
}
_SKU_SCHEMA: dict[str, Any] = {"type": "string", "pattern": "^[A-Z]{4}-[0-9]{5}$"}
#: n's body schema: an order as a shop would check it (nested objects, arrays of
#: objects, string patterns and formats, integer bounds, enums, no unknown members).
ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_id", "sku", "quantity", "currency", "customer", "items", "payment"],
    "additionalProperties": False,
    "properties": {
        "order_id": {"type": "string", "pattern": "^ORD-[0-9]{4}-[0-9]{6}$"},
        "sku": _SKU_SCHEMA,
        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
        "currency": {"enum": ["USD", "EUR", "GBP"]},
        "placed_at": {"type": "string", "format": "date-time"},
        "customer": {
            "type": "object",
            "required": ["id", "email", "name", "shipping_address"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^cus_[0-9a-f]{8}$"},
                "email": {"type": "string", "format": "email", "maxLength": 254},
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "tier": {"enum": ["free", "plus", "pro", "enterprise"]},
                "shipping_address": _ADDRESS_SCHEMA,
                "billing_address": _ADDRESS_SCHEMA,
            },
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 50,
            "items": {
                "type": "object",
                "required": ["sku", "quantity", "unit_price_cents"],
                "additionalProperties": False,
                "properties": {
                    "sku": _SKU_SCHEMA,
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                    "unit_price_cents": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
                    "gift_wrap": {"type": "boolean"},
                    "options": {
                        "type": "object",
                        "maxProperties": 10,
                        "additionalProperties": {"type": "string", "maxLength": 40},
                    },
                    "tags": {
                        "type": "array",
                        "maxItems": 10,
                        "uniqueItems": True,
                        "items": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,31}$"},
                    },
                },
            },
        },
        "payment": {
            "type": "object",
            "required": ["method", "amount_cents"],
            "additionalProperties": False,
            "properties": {
                "method": {"enum": ["card", "paypal", "invoice"]},
                "card_last4": {"type": "string", "pattern": "^[0-9]{4}$"},
                "amount_cents": {"type": "integer", "minimum": 1},
                "captured": {"type": "boolean"},
            },
        },
        "notes": {"type": "string", "maxLength": 500},
        "metadata": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 64}},
    },
}
#: Items in the 2 KB order: the body is then about 2,050 bytes.
ORDER_ITEMS = 9
_CATEGORIES = ("BOOK", "ELEC", "HOME", "TOYS", "GARD", "SPRT")


def large_order() -> dict[str, Any]:
    """m's and n's body: an order of ORDER_ITEMS items, about 2 KB, valid under
    ORDER_SCHEMA (checked in-process before anything starts), with the top-level
    ``sku`` and ``quantity`` the orders service needs to answer 201."""
    items: list[dict[str, Any]] = [
        {
            "sku": f"{_CATEGORIES[i % len(_CATEGORIES)]}-{10_000 + 7_919 * i % 90_000:05d}",
            "quantity": 1 + i % 3,
            "unit_price_cents": 299 + 1_733 * i,
            "gift_wrap": i % 2 == 0,
            "options": {"colour": ("red", "blue", "green")[i % 3], "size": "SML"[i % 3]},
            "tags": ["spring-sale", f"aisle-{i}"],
        }
        for i in range(ORDER_ITEMS)
    ]
    address = {
        "line1": "12 Analytical Engine Row",
        "line2": "Flat 3",
        "city": "London",
        "postal_code": "SW1A 1AA",
        "country": "GB",
    }
    return {
        "order_id": "ORD-2024-000123",
        "sku": items[0]["sku"],
        "quantity": items[0]["quantity"],
        "currency": "GBP",
        "placed_at": "2024-03-01T12:34:56Z",
        "customer": {
            "id": "cus_8f3a9c2d",
            "email": "ada.lovelace@example.com",
            "name": "Ada Lovelace",
            "tier": "pro",
            "shipping_address": address,
            "billing_address": {**address, "line2": "c/o Babbage"},
        },
        "items": items,
        "payment": {
            "method": "card",
            "card_last4": "4242",
            "amount_cents": sum(item["quantity"] * item["unit_price_cents"] for item in items),
            "captured": False,
        },
        "notes": "Please leave the parcel with the concierge if nobody answers the door.",
        "metadata": {"channel": "web", "campaign": "spring-sale", "client_version": "3.14.2"},
    }


def invalid_order(order: dict[str, Any]) -> dict[str, Any]:
    """``order`` with one nested violation (an item's sku breaks its pattern): n must
    refuse it with 422, while m, and the orders service itself, accept it."""
    items = [dict(item) for item in order["items"]]
    items[-1]["sku"] = "not-a-sku"
    return {**order, "items": items}


def _compile_order_schema() -> Any:
    """The gateway's own compiled ORDER_SCHEMA (``gateway.policies.schemas``)."""
    import gateway.config  # noqa: F401  (imported first: validation <-> config.loader cycle)
    from gateway.policies.validation import compile_schema

    return compile_schema(ORDER_SCHEMA)


def check_order_schema(document: dict[str, Any]) -> None:
    """The 2 KB order is valid, its broken twin is not: else n would measure 422s, or a
    schema that checks nothing."""
    schema = _compile_order_schema()
    errors = [error.message for error in schema.iter_errors(document)]
    if errors or not schema.is_valid(document):
        raise BenchError(f"the 2 KB order breaks its own schema: {errors}")
    if schema.is_valid(invalid_order(document)):
        raise BenchError("the schema accepts the broken order: it checks nothing")


def validator_microbenchmark(document: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The validator's own cost: ``compile_schema(ORDER_SCHEMA).is_valid(document)`` called in
    a loop in this process (on the load core, before any load starts), and next to it
    ``orjson.loads`` of the same body (n parses it too; m does not).

    Each of MICRO_REPEATS repetitions runs for about MICRO_REPEAT_S; the figures are
    the median and the fastest repetition, in microseconds per call.
    """
    import orjson

    schema = _compile_order_schema()

    def per_call(call: Callable[[], object]) -> dict[str, Any]:
        started = time.perf_counter()
        calls = 0
        while time.perf_counter() - started < 0.05:  # warm up, and size a repetition
            call()
            calls += 1
        number = max(100, round(calls * MICRO_REPEAT_S / 0.05))
        times = []
        for _ in range(MICRO_REPEATS):
            started = time.perf_counter()
            for _ in range(number):
                call()
            times.append((time.perf_counter() - started) / number * 1e6)
        return {
            "us_median": round(statistics.median(times), 2),
            "us_min": round(min(times), 2),
            "calls_per_repeat": number,
            "repeats": MICRO_REPEATS,
        }

    return {
        "what": "compile_schema(ORDER_SCHEMA).is_valid(document), in the harness's process",
        "body_bytes": len(body),
        "validate": per_call(lambda: schema.is_valid(document)),
        "orjson_loads": per_call(lambda: orjson.loads(body)),
    }


def _lua_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal (no escapes inside, whatever it holds)."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def post_script(folder: Path, name: str, body: bytes, unique_keys: bool) -> Path:
    """A wrk script POSTing ``body`` as JSON to the URL's path.

    With ``unique_keys``, each request carries ``Idempotency-Key: "<prefix>-<thread>-<n>"``,
    ``n`` counting up in ``request()``: the prefix (the script's argument, given after
    ``--``) differs per wrk run, so no key is ever sent twice to a gateway, warm-up and
    rounds included. Without, the request is built once (wrk's fast path).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.lua"
    text = body.decode()
    if unique_keys:
        script = f"""-- POST {len(body)} bytes of JSON, each request with a new Idempotency-Key.
-- The key is an RFC 8941 sf-string: "<prefix>-<thread>-<n>".
local body = {_lua_string(text)}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
local prefix = "run"
local counter = 0
function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(id or 0)
end
function request()
  counter = counter + 1
  local headers = {{}}
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = '"' .. prefix .. "-" .. counter .. '"'
  return wrk.format("POST", nil, headers, body)
end
"""
    else:
        script = f"""-- POST {len(body)} bytes of JSON, the same request every time.
wrk.method = "POST"
wrk.body = {_lua_string(text)}
wrk.headers["Content-Type"] = "application/json"
"""
    path.write_text(script)
    return path


_ORDER_ID = re.compile(r"^ord_(\d+)$")


def orders_made(origin: str) -> int:
    """How many orders the orders service has created so far, this probe's included.

    It numbers the orders it creates (``ord_100001``, ...) and keeps nothing else: one
    direct POST before and one after a run tell how many POSTs reached it in between.
    """
    status, _, raw = post(origin + ORDERS_PATH, json.dumps(SMALL_ORDER).encode())
    try:
        order_id = json.loads(raw).get("id", "") if status == 201 else ""
    except ValueError:
        order_id = ""
    match = _ORDER_ID.match(order_id) if isinstance(order_id, str) else None
    if match is None:
        raise BenchError(f"the orders service answered {status}: {raw[:200]!r}")
    return int(match[1])
