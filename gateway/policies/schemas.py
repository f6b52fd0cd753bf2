"""JSON Schemas compiled once, when the config loads.

A schema is checked by jsonschema (a broken one's error names the path inside it), then
compiled by jsonschema-rs, which both decides and lists violations: one library for
both, so a refused body always has its violations listed, and a valid one costs one
call into compiled code (5 µs for the benchmark's 2 KB order, against 42 µs for the
generated Python of fastjsonschema, used before).

Kept apart from the validation policy so the config loader can check schemas (and name
the path of a broken one) without importing the request path.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import orjson
from jsonschema import validators

#: A compiled schema: ``is_valid(document)``, and ``iter_errors(document)`` for a 422.
CompiledSchema = jsonschema_rs.Validator

_compiled: dict[bytes, CompiledSchema] = {}


def compile_schema(schema: dict[str, Any]) -> CompiledSchema:
    """The schema compiled, its draft from ``$schema`` (else the latest), ``format``
    checked whatever the draft. Raises ``ValueError`` naming the schema path."""
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    cached = _compiled.get(key)
    if cached is not None:
        return cached
    try:
        validators.validator_for(schema).check_schema(schema)
    except Exception as exc:  # jsonschema.SchemaError, with a path into the schema
        path = "/".join(str(part) for part in getattr(exc, "path", ()))
        message = getattr(exc, "message", str(exc))
        raise ValueError(f"invalid schema at /{path}: {message}") from None
    try:
        # Formats are assertions here (an email that is not one is refused), as the
        # docs promise, though drafts 2019-09 and later make them annotations only.
        compiled = jsonschema_rs.validator_for(schema, validate_formats=True)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise ValueError(f"invalid schema: {str(exc).splitlines()[0]}") from None
    _compiled[key] = compiled
    return compiled
