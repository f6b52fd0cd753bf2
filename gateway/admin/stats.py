"""``GET /admin/stats``: every route's cumulative figures, for the dashboard.

The answer holds counts since the process started, never rates: the server keeps no
state between calls, and the dashboard (or any script) gets a window by subtracting
two answers (``figures.py`` does it in Python, ``dashboard.js`` in the page). A
request-duration histogram travels as its per-bucket counts (not cumulative, the last
one past the highest bound), with the bounds sent once, so a quantile over a window is
the quantile of the bucket-wise difference.

Everything is read on the event loop, the only writer, in one pass without awaiting:
the figures of one answer are of one moment. Names of outcomes and cache results are
those of ``/metrics`` (``collector.py``), so the two never disagree on what a word
means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..metrics.collector import CACHE_RESULTS, RATE_LIMIT_OUTCOMES, UPSTREAM_OUTCOMES
from ..metrics.histogram import SECONDS_BUCKETS, Histogram
from ..metrics.recorder import RouteMetrics
from .http import json_response
from .view import GATEWAY

if TYPE_CHECKING:
    from ..server import Gateway

Json = dict[str, Any]

#: The counts of a route that has no recorder (metrics off, or no request yet).
_EMPTY = RouteMetrics("")


def stats(view: Gateway) -> Json:
    runtime = view.runtime
    recorders = {recorder.name: recorder for recorder in view.recorders}
    cache = view.cache.by_route if view.cache is not None else {}
    limits = view.limiter.by_route if view.limiter is not None else {}
    routes = []
    # The names requests are recorded under, in config order (a header-versioned API's
    # versions, then its dispatcher); the built-in OAuth routes come last.
    for name, route in runtime.routed.items():
        recorder = recorders.get(name, _EMPTY)
        routes.append(
            {
                "name": name,
                "kind": route.kind,
                "budget_ms": route.budget * 1000.0,
                **_requests(recorder.requests.items()),
                "partial": recorder.partial_answers,
                "backends": [
                    _backend(backend, by_outcome)
                    for backend, by_outcome in sorted(recorder.upstream.items())
                ],
                "cache": _counts(cache.get(name, {}), CACHE_RESULTS),
                "rate_limit": _counts(limits.get(name, {}), RATE_LIMIT_OUTCOMES),
            }
        )
    clock = view.clock
    return {
        "time": clock.wall(),
        "monotonic": clock.monotonic(),
        "metrics": runtime.config.metrics.enabled,
        "buckets": list(SECONDS_BUCKETS),
        "routes": routes,
    }


def _requests(by_status: Iterable[tuple[int, Histogram]]) -> Json:
    duration = [0] * (len(SECONDS_BUCKETS) + 1)
    statuses: dict[str, int] = {}
    for status, histogram in by_status:
        _add_into(duration, histogram)
        label = f"{status // 100}xx"
        statuses[label] = statuses.get(label, 0) + histogram.count
    return {"requests": sum(duration), "duration": duration, "statuses": statuses}


def _backend(name: str, by_outcome: Mapping[str, Histogram]) -> Json:
    duration = [0] * (len(SECONDS_BUCKETS) + 1)
    outcomes: dict[str, int] = {}
    for outcome, histogram in by_outcome.items():
        _add_into(duration, histogram)
        label = UPSTREAM_OUTCOMES.get(outcome, outcome)
        outcomes[label] = outcomes.get(label, 0) + histogram.count
    return {"name": name, "calls": sum(duration), "duration": duration, "outcomes": outcomes}


def _add_into(total: list[int], histogram: Histogram) -> None:
    for index, count in enumerate(histogram.counts):
        total[index] += count


def _counts(counts: Mapping[str, int], names: Mapping[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, count in counts.items():
        label = names.get(name, name)
        out[label] = out.get(label, 0) + count
    return out


async def show_stats(request: web.Request) -> web.Response:
    return json_response(stats(request.app[GATEWAY]))
