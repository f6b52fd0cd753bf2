"""Turning fan-out outcomes into one answer: pure, no I/O.

Rules:
- A part is present when its backend answered 2xx with valid JSON.
- Every part missing from a *required* backend fails the whole answer: 504 when it
  timed out, 502 otherwise. The first such backend in config order is named.
- A missing optional part becomes its ``fallback`` (or ``null``), and is listed in
  ``Gateway-Partial`` (and under ``_partial`` in the body when the route asks).
- Bodies are spliced from the upstreams' own bytes, already checked to be JSON, so
  nothing is decoded and encoded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

Reason = Literal["timeout", "error", "status", "cancelled"]


@dataclass(frozen=True, slots=True)
class Part:
    """What assembly needs of a backend, fixed at config load."""

    name: str
    required: bool
    #: The fallback, already encoded as JSON; ``b"null"`` when none is configured.
    fallback: bytes
    #: ``"name":`` encoded once.
    key: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    #: The body as sent, when present (2xx and valid JSON); else None.
    body: bytes | None
    reason: Reason | None
    detail: str
    elapsed: float


@dataclass(frozen=True, slots=True)
class Assembled:
    status: int
    body: bytes
    #: (part, reason) for each missing optional part, in config order.
    missing: tuple[tuple[str, Reason], ...]
    #: The required part whose absence failed the answer, with its reason and detail.
    failed: tuple[str, Reason, str] | None


def assemble(
    parts: Sequence[Part], outcomes: Sequence[Outcome], partial_in_body: bool
) -> Assembled:
    missing: list[tuple[str, Reason]] = []
    pieces: list[bytes] = []
    for part, outcome in zip(parts, outcomes, strict=True):
        if outcome.body is not None:
            pieces.append(part.key + outcome.body)
            continue
        reason: Reason = outcome.reason or "error"
        if part.required:
            return Assembled(
                status=504 if reason == "timeout" else 502,
                body=b"",
                missing=(),
                failed=(part.name, reason, outcome.detail),
            )
        missing.append((part.name, reason))
        pieces.append(part.key + part.fallback)
    if missing and partial_in_body:
        listed = [{"part": name, "reason": reason} for name, reason in missing]
        pieces.append(b'"_partial":' + orjson.dumps(listed))
    return Assembled(200, b"{" + b",".join(pieces) + b"}", tuple(missing), None)


def partial_header(missing: Sequence[tuple[str, Reason]]) -> str:
    """``Gateway-Partial: orders;reason=timeout, inventory;reason=status``: a structured
    field list (RFC 8941) of the missing parts, each with why."""
    return ", ".join(f"{name};reason={reason}" for name, reason in missing)


def make_part(name: str, required: bool, fallback: object, has_fallback: bool) -> Part:
    encoded = orjson.dumps(fallback) if has_fallback else b"null"
    return Part(name=name, required=required, fallback=encoded, key=orjson.dumps(name) + b":")
