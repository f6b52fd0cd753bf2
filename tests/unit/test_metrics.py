"""The metrics' pieces without a server: buckets, cumulative counts, label mapping."""

from __future__ import annotations

import pytest

from gateway.metrics.collector import _by_route, _merged
from gateway.metrics.histogram import RATIO_BUCKETS, SECONDS_BUCKETS, Histogram


def test_the_seconds_buckets_fit_a_50ms_budget() -> None:
    assert SECONDS_BUCKETS[0] == 0.0005
    assert 0.05 in SECONDS_BUCKETS
    assert list(SECONDS_BUCKETS) == sorted(set(SECONDS_BUCKETS))
    assert sum(1 for bound in SECONDS_BUCKETS if bound <= 0.05) == 16
    assert RATIO_BUCKETS[-1] == 2.0
    assert 1.0 in RATIO_BUCKETS


@pytest.mark.parametrize(
    ("value", "le"),
    [
        (0.0, "0.0005"),
        (0.0005, "0.0005"),  # le: a value on a bound belongs to that bucket
        (0.00051, "0.001"),
        (0.05, "0.05"),
        (0.0500001, "0.06"),
        (5.0, "5.0"),
        (7.0, "+Inf"),
    ],
)
def test_an_observation_lands_in_the_first_bucket_not_below_it(value: float, le: str) -> None:
    histogram = Histogram(SECONDS_BUCKETS)
    histogram.observe(value)
    cumulative = dict(histogram.cumulative())
    labels = list(cumulative)
    first = labels.index(le)
    assert all(cumulative[label] == 0 for label in labels[:first])
    assert all(cumulative[label] == 1 for label in labels[first:])
    assert histogram.sum == value
    assert histogram.count == 1


def test_cumulative_counts_end_with_the_total() -> None:
    histogram = Histogram((0.1, 0.2))
    for value in (0.05, 0.15, 0.15, 0.3):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 1), ("0.2", 3), ("+Inf", 4)]
    assert histogram.sum == pytest.approx(0.65)


def test_a_backend_status_answer_is_counted_as_an_error() -> None:
    error, status, ok = (Histogram((0.1,)) for _ in range(3))
    error.observe(0.05)
    status.observe(0.5)
    ok.observe(0.01)
    merged = _merged({"error": error, "status": status, "ok": ok})
    assert set(merged) == {"error", "ok"}
    assert merged["error"].cumulative() == [("0.1", 1), ("+Inf", 2)]
    assert merged["error"].sum == pytest.approx(0.55)
    assert merged["ok"].cumulative() == [("0.1", 1), ("+Inf", 1)]


def test_internal_outcome_names_map_to_label_values() -> None:
    counts = {"r": {"refused": 2, "refused_cached": 3, "store_down_admitted": 1}}
    names = {"refused_cached": "refused", "store_down_admitted": "fail_open"}
    assert _by_route(counts, names) == {("r", "refused"): 5, ("r", "fail_open"): 1}
