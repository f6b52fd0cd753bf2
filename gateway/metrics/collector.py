"""The gateway's figures as Prometheus metric families, built at scrape time.

Nothing here runs per request: the request path only bumps plain counters (the route
recorders, the cache's and the limiter's counts, the stores' error counts). A scrape
first copies them on the event loop (``take_snapshot``: list copies, well under a
millisecond), so what it reads is consistent without locks; then ``SnapshotCollector``
turns the copy into metric families and prometheus_client renders them, in a thread.
Rendering is pure Python and grows with routes x statuses x buckets (tens of
milliseconds for a large config): on the loop it would hold up every request in
flight for that long.

Metric names and labels are a contract with dashboards: see docs/observability.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .histogram import Histogram
from .recorder import RouteMetrics

if TYPE_CHECKING:
    # Typing only: the server module builds the metrics endpoint.
    from ..server import Gateway

#: Upstream outcomes as the upstream layer reports them -> the ``outcome`` label. A
#: fan-out backend that answered a non-2xx status is a failed call of that part.
UPSTREAM_OUTCOMES = {"status": "error"}
#: The limiter's own outcome names -> the ``outcome`` label (others pass unchanged).
RATE_LIMIT_OUTCOMES = {
    "refused_cached": "refused",
    "store_down_admitted": "fail_open",
    "store_down_refused": "fail_closed",
}
#: The cache's own result names -> the ``result`` label, as ``Cache-Status`` says them.
CACHE_RESULTS = {"miss_stored": "miss", "coalesced": "collapsed"}
BREAKER_STATES = {"closed": 0, "open": 1, "half_open": 2}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Copies of every figure at one moment, safe to read from another thread."""

    routes: list[RouteMetrics]
    cache: dict[str, dict[str, int]]
    rate_limits: dict[str, dict[str, int]]
    store_errors: dict[str, int]
    breakers: dict[str, str]
    reloads: dict[str, int]
    budgets: dict[str, float]
    in_flight: int


def take_snapshot(state: Gateway) -> Snapshot:
    """Copy the figures. On the event loop, the only writer: nothing moves meanwhile."""
    limiter, cache = state.limiter, state.cache
    errors: dict[str, int] = {}
    # Only the stores this gateway uses.
    if limiter is not None:
        errors["ratelimit"] = limiter.store_errors
    if state.idempotency is not None:
        errors["idempotency"] = state.idempotency.errors
    if state.auth is not None:
        errors["credentials"] = state.auth.store_errors
    if state.cache_bus is not None:
        errors["cache_bus"] = state.cache_bus.errors
    if state.auth is not None and state.auth.key_changes is not None:
        errors["key_changes"] = state.auth.key_changes.errors
    runtime = state.runtime
    return Snapshot(
        routes=[recorder.copy() for recorder in state.recorders],
        cache={route: dict(counts) for route, counts in cache.by_route.items()} if cache else {},
        rate_limits=(
            {route: dict(counts) for route, counts in limiter.by_route.items()} if limiter else {}
        ),
        store_errors=errors,
        breakers={"ratelimit": limiter.breaker.state} if limiter is not None else {},
        reloads={"ok": state.reloads_ok, "failed": state.reloads_failed},
        budgets={name: route.budget for name, route in runtime.routed.items()},
        in_flight=runtime.in_flight,
    )


class SnapshotCollector:
    """A prometheus_client collector (``collect()``) over one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot
        yield from _routes(snapshot.routes)
        yield _counter(
            "gateway_cache_results_total",
            "Cache lookups by route and result (as Cache-Status reports them).",
            ("route", "result"),
            _by_route(snapshot.cache, CACHE_RESULTS),
        )
        yield _counter(
            "gateway_ratelimit_decisions_total",
            "Rate-limit decisions by route and outcome.",
            ("route", "outcome"),
            _by_route(snapshot.rate_limits, RATE_LIMIT_OUTCOMES),
        )
        yield _counter(
            "gateway_store_errors_total",
            "Failed or timed-out calls to a shared store.",
            ("store",),
            {(store,): errors for store, errors in snapshot.store_errors.items()},
        )
        breakers = GaugeMetricFamily(
            "gateway_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            labels=("breaker",),
        )
        for breaker, state in snapshot.breakers.items():
            breakers.add_metric((breaker,), BREAKER_STATES[state])
        yield breakers
        yield _counter(
            "gateway_config_reloads_total",
            "Config reloads by result.",
            ("result",),
            {(result,): count for result, count in snapshot.reloads.items()},
        )
        budgets = GaugeMetricFamily(
            "gateway_route_budget_seconds",
            "Each route's configured time budget.",
            labels=("route",),
        )
        for name, budget in snapshot.budgets.items():
            budgets.add_metric((name,), budget)
        yield budgets
        yield GaugeMetricFamily(
            "gateway_requests_in_flight",
            "Requests being answered on the current config.",
            value=snapshot.in_flight,
        )


def _routes(recorders: list[RouteMetrics]) -> Iterator[Metric]:
    requests = HistogramMetricFamily(
        "gateway_requests_seconds",
        "Time from a request's arrival to the end of its response.",
        labels=("route", "status"),
    )
    upstream = HistogramMetricFamily(
        "gateway_upstream_seconds",
        "Upstream calls: time from the start of the call (of the fan-out for backends) "
        "to its end, by outcome.",
        labels=("route", "backend", "outcome"),
    )
    budget = HistogramMetricFamily(
        "gateway_fanout_budget_used_ratio",
        "Fan-out requests: duration over the request's budget.",
        labels=("route",),
    )
    partial = CounterMetricFamily(
        "gateway_partial_responses_total",
        "Partial fan-out responses, one per missing part (an answer missing two parts "
        "counts twice; gateway_partial_answers_total counts it once).",
        labels=("route", "missing"),
    )
    answers = CounterMetricFamily(
        "gateway_partial_answers_total",
        "Partial fan-out responses, one per answer whatever the parts it misses "
        "(zero for fan-out routes that have answered in full).",
        labels=("route",),
    )
    for recorder in recorders:
        route = recorder.name
        for status, histogram in sorted(recorder.requests.items()):
            _add(requests, (route, str(status)), histogram)
        for backend, by_outcome in sorted(recorder.upstream.items()):
            for outcome, histogram in _merged(by_outcome).items():
                _add(upstream, (route, backend, outcome), histogram)
        if recorder.budget_used.count:
            _add(budget, (route,), recorder.budget_used)
        for missing, count in sorted(recorder.partial.items()):
            partial.add_metric((route, missing), count)
        if recorder.budget_used.count:
            # Every fan-out route that has answered, zeros included, so that a share
            # computed from it exists for healthy routes too.
            answers.add_metric((route,), recorder.partial_answers)
    yield from (requests, upstream, budget, partial, answers)


def _add(family: HistogramMetricFamily, labels: tuple[str, ...], histogram: Histogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)


def _merged(by_outcome: Mapping[str, Histogram]) -> dict[str, Histogram]:
    """The histograms by label value, those of outcomes that share one added up."""
    out: dict[str, Histogram] = {}
    for outcome, histogram in sorted(by_outcome.items()):
        label = UPSTREAM_OUTCOMES.get(outcome, outcome)
        into = out.get(label)
        if into is None:
            into = out[label] = Histogram(histogram.bounds)
        into.counts = [a + b for a, b in zip(into.counts, histogram.counts, strict=True)]
        into.sum += histogram.sum
    return out


def _by_route(
    by_route: Mapping[str, Mapping[str, int]], names: Mapping[str, str]
) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {}
    for route, counts in sorted(by_route.items()):
        for name, count in counts.items():
            key = (route, names.get(name, name))
            out[key] = out.get(key, 0) + count
    return out


def _counter(
    name: str, documentation: str, labels: tuple[str, ...], values: Mapping[tuple[str, ...], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(label_values, value)
    return family
