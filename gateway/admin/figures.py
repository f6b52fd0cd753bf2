"""The dashboard's arithmetic: live figures from two ``GET /admin/stats`` answers.

The page does this in JavaScript (``dashboard.js``: ``windowFigures`` and ``quantile``), in
the browser, so that the server keeps no state between polls. This module is the same
arithmetic in Python, line for line: the tests hold the page's figures to it, and a
script that reads ``/admin/stats`` can use it.

A figure is None where the window has nothing to measure (no request, no call, no
cache lookup), which the page shows as a dash: a p99 of zero would be a lie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

#: Cache results answered from the cache, as in the hit-ratio query of
#: docs/observability.md: a fresh hit, or a miss collapsed into another's fetch.
CACHE_HITS = ("hit", "collapsed")
#: Rate-limit outcomes that refused the request (429, or 503 with the store down).
REFUSALS = ("refused", "fail_closed")


class BackendFigures(TypedDict):
    name: str
    calls: float
    p99: float | None
    timeout_share: float | None


class RouteFigures(TypedDict):
    name: str
    rate: float
    p50: float | None
    p99: float | None
    error_share: float | None
    partial_share: float | None
    cache_hit_ratio: float | None
    refusals: float
    backends: list[BackendFigures]


def quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of per-bucket ``counts`` (the last one past
    ``bounds[-1]``), as Prometheus's ``histogram_quantile`` estimates it: linear inside
    the bucket the rank falls in, from 0 for the first bucket; the highest bound when
    it falls past it (the bucket has no upper end to interpolate to)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0.0
    for index, upper in enumerate(bounds):
        count = counts[index]
        if below + count >= rank:
            lower = bounds[index - 1] if index > 0 else 0.0
            return lower + (upper - lower) * ((rank - below) / count)
        below += count
    return bounds[-1]


def window_figures(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[RouteFigures]:
    """Figures over the time between two answers, for the routes of ``current`` that
    ``previous`` has too (a route a reload just added waits for the next poll). Empty
    when the two cannot be compared: the gateway restarted in between."""
    seconds = current["monotonic"] - previous["monotonic"]
    if seconds <= 0:
        return []
    before = {route["name"]: route for route in previous["routes"]}
    bounds = current["buckets"]
    out: list[RouteFigures] = []
    for route in current["routes"]:
        old = before.get(route["name"])
        if old is None:
            continue
        requests = route["requests"] - old["requests"]
        if requests < 0:
            return []  # counts went back: a restart
        duration = _minus(route["duration"], old["duration"])
        statuses = _minus_counts(route["statuses"], old["statuses"])
        cache = _minus_counts(route["cache"], old["cache"])
        limits = _minus_counts(route["rate_limit"], old["rate_limit"])
        old_backends = {backend["name"]: backend for backend in old["backends"]}
        lookups = sum(cache.values())
        out.append(
            {
                "name": route["name"],
                "rate": requests / seconds,
                "p50": quantile(0.5, bounds, duration),
                "p99": quantile(0.99, bounds, duration),
                "error_share": _share(statuses.get("5xx", 0), requests),
                "partial_share": _share(route["partial"] - old["partial"], requests),
                "cache_hit_ratio": _share(sum(cache.get(n, 0) for n in CACHE_HITS), lookups),
                "refusals": sum(limits.get(n, 0) for n in REFUSALS) / seconds,
                "backends": [
                    _backend(backend, old_backends.get(backend["name"]), bounds, seconds)
                    for backend in route["backends"]
                ],
            }
        )
    return out


def _backend(
    backend: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    bounds: Sequence[float],
    seconds: float,
) -> BackendFigures:
    # A backend first called in this window was not in the previous answer: zero calls.
    calls = backend["calls"] - (old["calls"] if old is not None else 0)
    duration = _minus(backend["duration"], old["duration"] if old is not None else None)
    outcomes = _minus_counts(backend["outcomes"], old["outcomes"] if old is not None else {})
    return {
        "name": backend["name"],
        "calls": calls / seconds,
        "p99": quantile(0.99, bounds, duration),
        "timeout_share": _share(outcomes.get("timeout", 0), calls),
    }


def _minus(now: Sequence[float], then: Sequence[float] | None) -> list[float]:
    if then is None:
        return list(now)
    return [a - b for a, b in zip(now, then, strict=True)]


def _minus_counts(now: Mapping[str, float], then: Mapping[str, float]) -> dict[str, float]:
    return {name: count - then.get(name, 0) for name, count in now.items()}


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None
