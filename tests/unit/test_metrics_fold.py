"""A recorder's batched figures: folding a batch gives what observing each would."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.metrics.histogram import SECONDS_BUCKETS, Histogram
from gateway.metrics.recorder import FOLD_EVERY, RouteMetrics, RouteRecorders


def _request(timings: list[tuple[str, float, str]], kind: str = "proxy") -> Any:
    """What ``record`` reads of a request's context: its calls and its route's kind."""
    return SimpleNamespace(timings=timings, route=SimpleNamespace(kind=kind))


def _observed(values: list[float]) -> Histogram:
    histogram = Histogram(SECONDS_BUCKETS)
    for value in values:
        histogram.observe(value)
    return histogram


def test_observe_all_counts_like_observe_one_by_one() -> None:
    values = [0.0, 0.0005, 0.00051, 0.05, 0.0500001, 5.0, 7.0, 0.003, 0.003]
    histogram = Histogram(SECONDS_BUCKETS)
    histogram.observe_all(values)
    assert histogram.counts == _observed(values).counts
    assert histogram.sum == pytest.approx(sum(values))


def test_a_folded_batch_of_mixed_statuses_and_outcomes_is_exact() -> None:
    rng = random.Random(7)
    recorder = RouteMetrics("r")
    by_status: dict[int, list[float]] = {}
    by_call: dict[tuple[str, str], list[float]] = {}
    for _ in range(500):
        status = rng.choice((200, 200, 200, 404, 502))
        seconds = rng.uniform(0, 0.2)
        timings = [
            (name, rng.uniform(0, 0.1), rng.choice(("ok", "ok", "timeout", "error")))
            for name in rng.sample(("a", "b", "c"), rng.randint(0, 3))
        ]
        recorder.record(status, seconds, _request(timings))
        by_status.setdefault(status, []).append(seconds)
        for name, elapsed, outcome in timings:
            by_call.setdefault((name, outcome), []).append(elapsed)
    recorder.fold()
    assert set(recorder.requests) == set(by_status)
    for status, values in by_status.items():
        assert recorder.requests[status].counts == _observed(values).counts
        assert recorder.requests[status].sum == pytest.approx(sum(values))
    calls = {
        (name, outcome): histogram
        for name, by_outcome in recorder.upstream.items()
        for outcome, histogram in by_outcome.items()
    }
    assert set(calls) == set(by_call)
    for key, values in by_call.items():
        assert calls[key].counts == _observed(values).counts
        assert calls[key].sum == pytest.approx(sum(values))


def test_a_recorder_folds_by_itself_so_its_batch_stays_bounded() -> None:
    recorder = RouteMetrics("r")
    for _ in range(FOLD_EVERY - 1):
        recorder.record(200, 0.001, _request([("a", 0.0005, "ok")]))
    assert recorder.requests == {}  # still in the batch
    recorder.record(200, 0.001, _request([("a", 0.0005, "ok")]))
    assert recorder.requests[200].count == FOLD_EVERY
    assert recorder.upstream["a"]["ok"].count == FOLD_EVERY


def test_readers_see_every_request_recorded_so_far() -> None:
    recorders = RouteRecorders()
    recorder = recorders.route("r")
    recorder.record(200, 0.002, _request([]))
    recorder.record(503, 0.004, None)  # answered before a route's context was made
    (seen,) = list(recorders)
    assert {status: h.count for status, h in seen.requests.items()} == {200: 1, 503: 1}
    twin = recorder.copy()
    recorder.record(200, 0.002, _request([]))
    assert twin.copy().requests[200].count == 1  # a copy is not changed by later requests
    assert recorder.copy().requests[200].count == 2
