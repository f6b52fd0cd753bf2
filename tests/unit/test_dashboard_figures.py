"""The dashboard's arithmetic (gateway/admin/figures.py), which the page's JS mirrors."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.admin.figures import quantile, window_figures
from gateway.metrics.histogram import SECONDS_BUCKETS, Histogram

BOUNDS = (0.01, 0.02, 0.05, 0.1)


@pytest.mark.parametrize(
    ("q", "counts", "expected"),
    [
        # All in (0.02, 0.05]: linear from 0.02 to 0.05 by rank.
        (0.5, [0, 0, 10, 0, 0], 0.02 + 0.03 * 0.5),
        (0.99, [0, 0, 10, 0, 0], 0.02 + 0.03 * 0.99),
        # The first bucket interpolates from 0.
        (0.5, [4, 0, 0, 0, 0], 0.005),
        # Rank 5 of 10: the 4 below, then 1 of the 2 in (0.01, 0.02].
        (0.5, [4, 2, 4, 0, 0], 0.01 + 0.01 * 0.5),
        # Past the highest bound: that bound, as Prometheus answers.
        (0.99, [0, 0, 0, 1, 99], 0.1),
        # Rank exactly on a bucket's top: that bucket's upper bound.
        (0.5, [5, 5, 0, 0, 0], 0.01),
    ],
)
def test_quantile_as_prometheus_estimates_it(q: float, counts: list[int], expected: float) -> None:
    assert quantile(q, BOUNDS, counts) == pytest.approx(expected)


def test_no_observation_has_no_quantile() -> None:
    assert quantile(0.99, BOUNDS, [0, 0, 0, 0, 0]) is None


def test_quantile_of_a_recorded_histogram() -> None:
    histogram = Histogram(SECONDS_BUCKETS)
    for _ in range(100):
        histogram.observe(0.052)  # in (0.05, 0.06]
    p99 = quantile(0.99, SECONDS_BUCKETS, histogram.counts)
    assert p99 is not None
    assert 0.05 < p99 <= 0.06


def stats(monotonic: float, **route: Any) -> dict[str, Any]:
    """An /admin/stats answer with one route, ``dash``."""
    body = {
        "name": "dash",
        "kind": "fanout",
        "budget_ms": 50.0,
        "requests": 0,
        "duration": [0] * (len(BOUNDS) + 1),
        "statuses": {},
        "partial": 0,
        "backends": [],
        "cache": {},
        "rate_limit": {},
    }
    body.update(route)
    return {
        "time": 1.0,
        "monotonic": monotonic,
        "metrics": True,
        "buckets": list(BOUNDS),
        "routes": [body],
    }


def test_figures_are_over_the_window_between_two_answers() -> None:
    before = stats(
        100.0,
        requests=50,
        duration=[50, 0, 0, 0, 0],
        statuses={"2xx": 50},
        partial=3,
        backends=[
            {"name": "slow", "calls": 50, "duration": [50, 0, 0, 0, 0], "outcomes": {"ok": 50}}
        ],
        cache={"hit": 5, "miss": 5},
        rate_limit={"admitted": 50},
    )
    after = stats(
        102.0,
        requests=70,
        # The 20 new requests all in (0.02, 0.05].
        duration=[50, 0, 20, 0, 0],
        statuses={"2xx": 65, "5xx": 5},
        partial=13,
        backends=[
            {
                "name": "slow",
                "calls": 70,
                "duration": [50, 0, 0, 20, 0],
                "outcomes": {"ok": 54, "timeout": 16},
            },
            # First called in this window: absent before.
            {"name": "new", "calls": 4, "duration": [4, 0, 0, 0, 0], "outcomes": {"ok": 4}},
        ],
        cache={"hit": 8, "miss": 6, "collapsed": 1},
        rate_limit={"admitted": 66, "refused": 3, "fail_closed": 1},
    )
    (figures,) = window_figures(before, after)
    assert figures["name"] == "dash"
    assert figures["rate"] == 10.0
    assert figures["p50"] == pytest.approx(0.02 + 0.03 * 0.5)
    assert figures["p99"] == pytest.approx(0.02 + 0.03 * 0.99)
    assert figures["error_share"] == 5 / 20
    assert figures["partial_share"] == 10 / 20
    # 3 hits and 1 collapsed of 5 lookups.
    assert figures["cache_hit_ratio"] == 4 / 5
    assert figures["refusals"] == 2.0
    slow, new = figures["backends"]
    assert slow["name"] == "slow"
    assert slow["calls"] == 10.0
    assert slow["timeout_share"] == 16 / 20
    assert slow["p99"] == pytest.approx(0.05 + 0.05 * 0.99)
    assert new == {
        "name": "new",
        "calls": 2.0,
        "p99": pytest.approx(0.01 * 0.99),
        "timeout_share": 0.0,
    }


def test_a_window_without_traffic_has_dashes_not_zeros() -> None:
    before = stats(100.0, requests=5, duration=[5, 0, 0, 0, 0], statuses={"2xx": 5})
    after = stats(102.0, requests=5, duration=[5, 0, 0, 0, 0], statuses={"2xx": 5})
    (figures,) = window_figures(before, after)
    assert figures["rate"] == 0.0
    assert figures["refusals"] == 0.0
    for name in ("p50", "p99", "error_share", "partial_share", "cache_hit_ratio"):
        assert figures[name] is None, name


def test_a_restart_or_a_new_route_gives_no_figures() -> None:
    before = stats(100.0, requests=50, duration=[50, 0, 0, 0, 0])
    # Counts went back: the gateway restarted between the two polls.
    assert window_figures(before, stats(102.0, requests=3, duration=[3, 0, 0, 0, 0])) == []
    # A monotonic clock that did not advance.
    assert window_figures(before, before) == []
    # A route the previous answer did not have waits for the next poll.
    renamed = stats(102.0, name="other")
    assert window_figures(before, renamed) == []
