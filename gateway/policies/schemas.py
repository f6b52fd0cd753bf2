"""JSON Schemas compiled once: a fast validator and a thorough one per schema.

Kept apart from the validation policy so the config loader can check schemas (and name
the path of a broken one) without importing the request path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastjsonschema
import orjson
from jsonschema import validators

_compiled: dict[bytes, tuple[Callable[[Any], Any], Any]] = {}


def compile_schema(schema: dict[str, Any]) -> tuple[Callable[[Any], Any], Any]:
    """(fast validator, full validator). Raises ``ValueError`` naming the schema path."""
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    cached = _compiled.get(key)
    if cached is not None:
        return cached
    full_class = validators.validator_for(schema)
    try:
        full_class.check_schema(schema)
    except Exception as exc:  # jsonschema.SchemaError, with a path into the schema
        path = "/".join(str(part) for part in getattr(exc, "path", ()))
        message = getattr(exc, "message", str(exc))
        raise ValueError(f"invalid schema at /{path}: {message}") from None
    try:
        fast = fastjsonschema.compile(schema)
    except fastjsonschema.JsonSchemaDefinitionException as exc:
        raise ValueError(f"invalid schema: {exc}") from None
    compiled = (fast, full_class(schema))
    _compiled[key] = compiled
    return compiled
