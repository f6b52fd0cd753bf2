"""The budget report's analysis: Server-Timing samples -> figures, with no I/O."""

from __future__ import annotations

import math

import pytest

from gateway.budget.analysis import analyse, histogram, nice_step, read_timing
from gateway.loadgen import LoadResult, Sample

BUDGET = 0.050  # seconds


def timing(calls: dict[str, tuple[float, str]], own: float = 0.3, **policies: float) -> str:
    """A Server-Timing value written the way gateway/observability.py writes it."""
    entries = [f'{name};dur={ms};desc="{outcome}"' for name, (ms, outcome) in calls.items()]
    entries += [f"{name};dur={ms}" for name, ms in policies.items()]
    total = max((ms for ms, _ in calls.values()), default=0.0) + own
    entries += [f"gateway;dur={own}", f"total;dur={total:.1f}"]
    return ", ".join(entries)


def sample(
    latency_ms: float,
    server_timing: str | None,
    *,
    status: int | None = 200,
    partial: str | None = None,
    error: str | None = None,
    at: float = 0.0,
) -> Sample:
    return Sample(
        scheduled=at,
        latency_s=latency_ms / 1000,
        status=status,
        server_timing=server_timing,
        partial=partial,
        error=error,
    )


def result(samples: list[Sample], *, stopped: bool = False) -> LoadResult:
    return LoadResult(
        url="http://gw/v1/dash/1",
        rate=100,
        duration=1,
        samples=samples,
        elapsed_s=1.0,
        stopped=stopped,
    )


FAST = timing({"user": (4.0, "ok"), "recs": (6.0, "ok")})


def slow_recs(user_ms: float = 5.0) -> str:
    return timing({"user": (user_ms, "ok"), "recs": (50.0, "timeout")})


# --- read_timing -------------------------------------------------------------------------


def test_entries_are_sorted_into_calls_policies_own_time_and_total():
    parsed = read_timing(
        'user;dur=4.1;desc="ok", recs;dur=50.0;desc="timeout", ratelimit;dur=0.05, '
        "gateway;dur=0.3, total;dur=50.4"
    )
    assert parsed.calls == (("user", 4.1, "ok"), ("recs", 50.0, "timeout"))
    assert parsed.policies == (("ratelimit", 0.05),)
    assert parsed.own_ms == 0.3
    assert parsed.total_ms == 50.4


def test_entries_without_a_duration_are_skipped():
    parsed = read_timing('user;desc="ok", cache, gateway;dur=x, total;dur=1.0')
    assert parsed.calls == ()
    assert parsed.policies == ()
    assert parsed.own_ms is None
    assert parsed.total_ms == 1.0


# --- per-backend figures -----------------------------------------------------------------


def test_per_backend_percentiles_and_outcome_counts():
    samples = [sample(10.0, timing({"user": (float(ms), "ok")})) for ms in range(1, 101)]
    samples.append(sample(10.0, timing({"user": (200.0, "error")})))
    figures = analyse(result(samples), BUDGET)
    (user,) = figures.backends
    assert user.name == "user"
    assert user.latency.count == 101
    assert user.latency.p50 == 51.0  # nearest rank of 101 values: the 51st
    assert user.latency.p99 == 100.0
    assert user.latency.max == 200.0
    assert user.outcomes == {"ok": 100, "error": 1}


def test_outcomes_are_listed_in_a_fixed_order_then_alphabetically():
    samples = [
        sample(5.0, timing({"a": (1.0, "zeta")})),
        sample(5.0, timing({"a": (1.0, "cancelled")})),
        sample(5.0, timing({"a": (1.0, "ok")})),
        sample(5.0, timing({"a": (1.0, "alpha")})),
        sample(5.0, timing({"a": (1.0, "timeout")})),
    ]
    (backend,) = analyse(result(samples), BUDGET).backends
    assert list(backend.outcomes) == ["ok", "timeout", "cancelled", "alpha", "zeta"]


def test_backends_keep_the_order_the_gateway_wrote_them_in():
    samples = [sample(5.0, timing({"user": (1.0, "ok"), "orders": (2.0, "ok"), "a": (3.0, "ok")}))]
    assert [b.name for b in analyse(result(samples), BUDGET).backends] == ["user", "orders", "a"]


def test_policies_and_own_time_and_total_are_summarised():
    samples = [
        sample(9.0, timing({"user": (4.0, "ok")}, own=0.2, ratelimit=0.05)),
        sample(9.0, timing({"user": (6.0, "ok")}, own=0.4, ratelimit=0.07)),
    ]
    figures = analyse(result(samples), BUDGET)
    assert figures.policies["ratelimit"].p50 == 0.05
    assert figures.policies["ratelimit"].max == 0.07
    assert figures.own_time is not None
    assert (figures.own_time.p50, figures.own_time.max) == (0.2, 0.4)
    assert figures.server_total is not None
    assert (figures.server_total.p50, figures.server_total.max) == (4.2, 6.4)


# --- the budget ----------------------------------------------------------------------------


def test_over_budget_share_counts_every_request_strictly_over_the_budget():
    samples = [
        sample(49.0, FAST),
        sample(50.0, FAST),  # at the budget is within it
        sample(50.5, slow_recs()),
        sample(5000.0, None, status=None, error="timeout"),  # no answer: over too
    ]
    figures = analyse(result(samples), BUDGET)
    assert figures.over_budget == 2
    assert figures.over_budget_share == 0.5
    assert figures.failures == 1
    assert figures.responses == 3


def test_partial_share_is_of_responses_and_parts_are_counted():
    samples = [
        sample(51.0, slow_recs(), partial="recs;reason=timeout"),
        sample(51.0, slow_recs(), partial="recs;reason=timeout, user;reason=status"),
        sample(8.0, FAST),
        sample(8.0, FAST),
        sample(5000.0, None, status=None, error="timeout"),
    ]
    figures = analyse(result(samples), BUDGET)
    assert figures.partial == 2
    assert figures.partial_share == 0.5  # 2 of the 4 responses; the failure is no response
    assert figures.partial_parts == {"recs": 2, "user": 1}


def test_the_backend_that_ended_last_in_over_budget_requests_spent_the_budget():
    samples = [sample(51.0, slow_recs()) for _ in range(3)]
    # A request within budget where user ended last: slowest, but spent no budget.
    samples.append(sample(12.0, timing({"user": (9.0, "ok"), "recs": (3.0, "ok")})))
    figures = analyse(result(samples), BUDGET)
    backends = {b.name: b for b in figures.backends}
    assert figures.spent_by == "recs"
    assert (backends["recs"].slowest, backends["recs"].spent_budget) == (3, 3)
    assert (backends["user"].slowest, backends["user"].spent_budget) == (1, 0)


def test_a_slow_backend_is_blamed_even_when_another_is_slower_within_budget():
    over = [sample(60.0, timing({"user": (5.0, "ok"), "orders": (55.0, "ok")})) for _ in range(2)]
    within = [sample(30.0, timing({"user": (25.0, "ok"), "orders": (2.0, "ok")})) for _ in range(5)]
    figures = analyse(result(over + within), BUDGET)
    backends = {b.name: b for b in figures.backends}
    assert backends["user"].slowest == 5
    assert figures.spent_by == "orders"


def test_tied_calls_each_count_and_the_first_listed_is_named():
    both = timing({"a": (50.0, "timeout"), "b": (50.0, "timeout"), "c": (2.0, "ok")})
    figures = analyse(result([sample(51.0, both)]), BUDGET)
    spent = {b.name: b.spent_budget for b in figures.backends}
    assert spent == {"a": 1, "b": 1, "c": 0}
    assert figures.spent_by == "a"


def test_nobody_spent_the_budget_when_every_request_was_within_it():
    figures = analyse(result([sample(20.0, FAST), sample(22.0, FAST)]), BUDGET)
    assert figures.over_budget == 0
    assert figures.spent_by is None


def test_requests_over_budget_without_server_timing_blame_nobody():
    figures = analyse(result([sample(80.0, None, status=502)]), BUDGET)
    assert figures.over_budget == 1
    assert figures.spent_by is None


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="budget"):
        analyse(result([]), 0.0)
    with pytest.raises(ValueError, match="budget"):
        analyse(result([]), math.nan)


def test_no_samples_give_empty_figures():
    figures = analyse(result([], stopped=True), BUDGET)
    assert figures.requests == 0
    assert figures.latency is None
    assert figures.backends == ()
    assert (figures.over_budget_share, figures.partial_share) == (0.0, 0.0)
    assert figures.median is None
    assert figures.slowest is None
    assert figures.stopped


# --- waterfalls ----------------------------------------------------------------------------


def test_waterfalls_are_the_median_and_the_slowest_timed_request():
    samples = [
        sample(float(ms), timing({"user": (ms - 1.0, "ok")}), at=ms / 1000) for ms in (30, 10, 20)
    ]
    # Slower, but without Server-Timing: it cannot be drawn, so it is not chosen.
    samples.append(sample(900.0, None, status=None, error="timeout"))
    figures = analyse(result(samples), BUDGET)
    assert figures.median is not None
    assert figures.slowest is not None
    assert figures.median.latency_ms == pytest.approx(20.0)
    assert figures.median.scheduled_s == pytest.approx(0.020)
    assert figures.slowest.latency_ms == pytest.approx(30.0)
    assert figures.slowest.which == "slowest"


def test_waterfall_bars_place_policies_in_sequence_and_calls_after_them():
    header = timing(
        {"user": (4.0, "ok"), "recs": (50.0, "timeout")}, own=0.3, auth=0.5, ratelimit=0.25
    )
    figures = analyse(result([sample(52.0, header, partial="recs;reason=timeout")]), BUDGET)
    assert figures.median is not None
    bars = {bar.name: bar for bar in figures.median.bars}
    assert [bar.kind for bar in figures.median.bars] == [
        "client",
        "total",
        "policy",
        "policy",
        "call",
        "call",
        "own",
    ]
    assert (bars["auth"].start_ms, bars["ratelimit"].start_ms) == (0.0, 0.5)
    assert bars["user"].start_ms == bars["recs"].start_ms == 0.75
    assert (bars["recs"].dur_ms, bars["recs"].outcome) == (50.0, "timeout")
    assert bars["client"].dur_ms == pytest.approx(52.0)
    assert figures.median.partial == "recs;reason=timeout"


# --- histogram -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "step"),
    [(0.3, 0.5), (1.0, 1.0), (1.2, 2.0), (2.1, 2.5), (3.0, 5.0), (7.0, 10.0), (0.024, 0.025)],
)
def test_nice_steps(raw, step):
    assert nice_step(raw) == pytest.approx(step)


def test_histogram_counts_every_latency_and_reaches_past_the_budget():
    latencies = [1.0, 2.0, 49.0, 50.0, 51.0, 55.0]
    hist = histogram(latencies, 50.0)
    assert sum(hist.counts) + hist.beyond == len(latencies)
    assert hist.beyond == 0
    assert hist.upper_ms > 55.0
    assert hist.upper_ms >= 60.0  # at least 1.2 x the budget
    assert hist.counts[int(55.0 // hist.bin_ms)] == 1


def test_a_far_straggler_is_counted_beyond_the_range():
    latencies = [10.0] * 99 + [5000.0]
    hist = histogram(latencies, 50.0)
    assert hist.beyond == 1
    assert hist.upper_ms < 1000.0  # the other bars are not squashed by the 5 s one
    assert sum(hist.counts) == 99


def test_histogram_without_latencies_still_spans_the_budget():
    hist = histogram([], 50.0)
    assert sum(hist.counts) == 0
    assert hist.upper_ms >= 60.0
