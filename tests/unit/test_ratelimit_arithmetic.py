"""``arithmetic.decide``: GCRA rate + burst and epoch-aligned quotas, with explicit ``now``.

Every case states the time it decides at, so nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from gateway.policies.ratelimit.arithmetic import Decision, Limit, State, decide, expiry

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC; not on a minute or day boundary
DAY = 86400.0


def rate(per_second: float, burst: int, name: str = "burst") -> Limit:
    return Limit(name, "rate", per_second, burst, 0.0)


def quota(count: int, period: float, name: str = "daily") -> Limit:
    return Limit(name, "quota", float(count), 0, period)


class Run:
    """A sequence of decisions on the same limits, carrying the states forward."""

    def __init__(self, *limits: Limit) -> None:
        self.limits = limits
        self.states: Sequence[State] = [None] * len(limits)

    def __call__(self, now: float, cost: int = 1) -> Decision:
        decision, self.states = decide(self.limits, self.states, cost, now)
        return decision

    def admitted_at(self, now: float, tries: int, cost: int = 1) -> int:
        return sum(self(now, cost).admitted for _ in range(tries))


# -- rate and burst ---------------------------------------------------------------


def test_burst_admits_exactly_burst_at_once() -> None:
    run = Run(rate(10, 5))
    remaining = []
    for _ in range(5):
        decision = run(T0)
        assert decision.admitted
        remaining.append(decision.outcomes[0].remaining)
    assert remaining == [4, 3, 2, 1, 0]
    refused = run(T0)
    assert not refused.admitted
    assert refused.outcomes[0].remaining == 0
    assert refused.retry_after == pytest.approx(0.1, abs=1e-6)


def test_burst_is_whole_at_wall_clock_times() -> None:
    """``rate: 5/s, burst: 10`` must let 10 through at once at any time of day.

    At epoch-scale times a float's resolution is ~2.4e-7 s, so ``tat + cost * interval -
    burst * interval`` can land one ulp after ``now``; a tolerance far below that
    (``1e-9`` in ``_rate``) does not absorb it, and the last unit of the burst is refused.
    """
    cases = [(5.0, 10), (9.0, 3), (40.0, 2), (6.0, 2), (10.0, 20), (50.0, 10)]
    admitted = {}
    for per_second, burst in cases:
        for now in (T0, 1_712_345_678.9):
            admitted[(per_second, burst, now)] = Run(rate(per_second, burst)).admitted_at(
                now, burst + 2
            )
    assert admitted == {key: key[1] for key in admitted}


def test_after_the_burst_requests_are_spaced_by_the_interval() -> None:
    run = Run(rate(10, 5))
    assert run.admitted_at(T0, 10) == 5
    # Just before one interval has passed: still nothing.
    assert not run(T0 + 0.099).admitted
    # Each interval lets exactly one more through.
    for step in range(1, 6):
        now = T0 + 0.1 * step
        assert run(now).admitted, step
        assert not run(now).admitted, step


def test_an_idle_limit_refills_to_the_burst_and_no_further() -> None:
    run = Run(rate(10, 5))
    assert run.admitted_at(T0, 5) == 5
    # An hour of silence still gives only `burst` at once.
    assert run.admitted_at(T0 + 3600, 20) == 5


def test_sustained_rate_over_a_long_run() -> None:
    run = Run(rate(50, 10))
    admitted = 0
    # A request every millisecond for 5 s: burst + rate * seconds pass.
    for ms in range(5000):
        admitted += run(T0 + ms / 1000).admitted
    assert admitted in range(258, 261)


def test_cost_consumes_several_units() -> None:
    run = Run(rate(1, 5))
    first = run(T0, cost=3)
    assert first.admitted
    assert first.outcomes[0].remaining == 2
    assert first.outcomes[0].reset == pytest.approx(3.0)
    assert not run(T0, cost=3).admitted
    second = run(T0, cost=2)
    assert second.admitted
    assert second.outcomes[0].remaining == 0


def test_cost_above_the_burst_never_passes() -> None:
    run = Run(rate(1, 5))
    decision = run(T0, cost=6)
    assert not decision.admitted
    assert decision.outcomes[0].remaining == 5
    assert run(T0 + 3600, cost=6).admitted is False


def test_a_refusal_returns_the_old_states_unchanged() -> None:
    limits = [rate(1, 3)]
    decision, states = decide(limits, [None], 1, T0)
    assert decision.admitted
    tat = states[0]
    assert tat == pytest.approx(T0 + 1.0)
    # A refused request (cost 3 > the 2 units left) hands back the very same state.
    refused, after = decide(limits, states, 3, T0)
    assert not refused.admitted
    assert after == states
    assert after[0] is tat


def test_refused_requests_do_not_consume_budget() -> None:
    run = Run(rate(1, 5))
    assert run(T0).admitted
    for _ in range(10):
        assert not run(T0, cost=5).admitted
    # The four units left before the refusals are all still there.
    decision = run(T0, cost=4)
    assert decision.admitted
    assert decision.outcomes[0].remaining == 0


def test_rate_reset_and_retry_after() -> None:
    run = Run(rate(2, 4))  # interval 0.5 s
    admitted = run(T0)
    assert (admitted.outcomes[0].reset, admitted.outcomes[0].retry_after) == (0.5, 0.0)
    assert run.admitted_at(T0, 3) == 3
    refused = run(T0 + 0.2)
    outcome = refused.outcomes[0]
    assert not outcome.admitted
    # Whole again once all four units drained: 2 s after T0.
    assert outcome.reset == pytest.approx(1.8, abs=1e-6)
    # The next unit frees up at T0 + 0.5.
    assert outcome.retry_after == pytest.approx(0.3, abs=1e-6)
    assert refused.retry_after == pytest.approx(0.3, abs=1e-6)
    # Refused with cost 3: three units must drain, the last at T0 + 1.5.
    big = run(T0 + 0.2, cost=3)
    assert big.retry_after == pytest.approx(1.3, abs=1e-6)
    assert big.outcomes[0].remaining == 0


def test_remaining_counts_what_could_pass_now() -> None:
    run = Run(rate(1, 5))
    assert run(T0, cost=4).admitted
    refused = run(T0, cost=2)
    assert not refused.admitted
    assert refused.outcomes[0].remaining == 1
    # 2.5 s later two and a half units are back: two could pass.
    later = run(T0 + 2.5, cost=4)
    assert not later.admitted
    assert later.outcomes[0].remaining == 3


# -- quota ---------------------------------------------------------------------------


def test_quota_counts_within_its_window() -> None:
    run = Run(quota(3, DAY))
    results = [run(T0 + step) for step in range(4)]
    assert [d.admitted for d in results] == [True, True, True, False]
    assert [d.outcomes[0].remaining for d in results] == [2, 1, 0, 0]
    window_end = (math.floor(T0 / DAY) + 1) * DAY
    refused = results[3].outcomes[0]
    assert refused.reset == pytest.approx(window_end - (T0 + 3))
    assert refused.retry_after == refused.reset
    assert results[0].outcomes[0].retry_after == 0.0


def test_quota_resets_at_the_epoch_aligned_boundary() -> None:
    run = Run(quota(2, DAY))
    midnight = (math.floor(T0 / DAY) + 1) * DAY  # 00:00 UTC, not T0 + 1 day
    assert run.admitted_at(midnight - 10, 3) == 2
    assert not run(midnight - 1e-3).admitted
    assert run(midnight).admitted
    fresh = run(midnight)
    assert fresh.admitted
    assert fresh.outcomes[0].remaining == 0
    assert fresh.outcomes[0].reset == pytest.approx(DAY)


def test_quota_window_is_aligned_even_for_odd_periods() -> None:
    run = Run(quota(1, 7.0, name="quota-7s"))
    start = math.floor(T0 / 7.0) * 7.0
    assert run(start + 6.5).admitted
    assert not run(start + 6.9).admitted
    assert run(start + 7.0).admitted


def test_quota_cost_and_refusal_keep_the_count() -> None:
    run = Run(quota(10, 3600.0, name="hourly"))
    assert run(T0, cost=7).admitted
    refused = run(T0, cost=4)
    assert not refused.admitted
    assert refused.outcomes[0].remaining == 3
    assert run(T0, cost=3).admitted
    assert not run(T0).admitted


# -- several limits, decided together ----------------------------------------------------


def test_exhausted_quota_leaves_the_rate_state_untouched() -> None:
    limits = [rate(1, 10), quota(2, DAY)]
    states: Sequence[State] = [None, None]
    for _ in range(2):
        decision, states = decide(limits, states, 1, T0)
        assert decision.admitted
    tat_before = states[0]
    refused, after = decide(limits, states, 1, T0)
    assert not refused.admitted
    assert refused.outcomes[0].admitted  # the rate alone would have admitted it...
    assert not refused.outcomes[1].admitted  # ...the quota did not
    assert after[0] == tat_before  # so the rate was not charged
    # The rate limit on its own still has 8 of its 10 units.
    alone, _ = decide(limits[:1], after[:1], 8, T0)
    assert alone.admitted


def test_exhausted_rate_leaves_the_quota_count_untouched() -> None:
    limits = [rate(1, 2), quota(100, DAY)]
    states: Sequence[State] = [None, None]
    for _ in range(2):
        decision, states = decide(limits, states, 1, T0)
        assert decision.admitted
    for _ in range(5):
        refused, states = decide(limits, states, 1, T0)
        assert not refused.admitted
        assert refused.outcomes[1].admitted
        assert refused.outcomes[1].remaining == 97  # would be 97 after this one...
    window = math.floor(T0 / DAY)
    assert states[1] == (window, 2)  # ...but only the two admitted were counted


def test_retry_after_is_the_longest_of_the_refusing_limits() -> None:
    run = Run(rate(1, 1), quota(1, 60.0, name="minutely"))
    assert run(T0).admitted
    refused = run(T0)
    rate_wait, quota_wait = (o.retry_after for o in refused.outcomes)
    assert rate_wait == pytest.approx(1.0)
    assert quota_wait == pytest.approx((math.floor(T0 / 60) + 1) * 60 - T0)
    assert refused.retry_after == max(rate_wait, quota_wait)


def test_retry_after_ignores_admitting_limits() -> None:
    # The rate admits (retry 0); only the quota's wait counts.
    run = Run(rate(1, 10), quota(1, 60.0, name="minutely"))
    assert run(T0).admitted
    refused = run(T0)
    assert refused.outcomes[0].admitted
    assert refused.retry_after == refused.outcomes[1].retry_after > 0


def test_decide_needs_one_state_per_limit() -> None:
    with pytest.raises(ValueError):
        decide([rate(1, 1), quota(1, DAY)], [None], 1, T0)


# -- Limit's header values and expiry ------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "window", "units"),
    [
        (rate(10, 20), 2, 20),
        (rate(1, 5), 5, 5),
        (rate(50, 10), 1, 10),  # 0.2 s rounds up to the 1 s minimum
        (rate(1 / 60, 3), 180, 3),
        (quota(10_000, DAY), 86400, 10_000),
        (quota(500, 3600.0, name="hourly"), 3600, 500),
        (quota(5, 0.2, name="tiny"), 1, 5),
    ],
)
def test_window_seconds_and_quota_units(limit: Limit, window: int, units: int) -> None:
    assert limit.window_seconds == window
    assert limit.quota_units == units


def test_interval_is_one_over_the_rate() -> None:
    assert rate(4, 1).interval == 0.25


def test_expiry_of_a_rate_state_is_until_its_tat() -> None:
    limit = rate(2, 4)
    assert expiry(limit, None, T0) == 0.0
    _, states = decide([limit], [None], 3, T0)
    assert expiry(limit, states[0], T0) == pytest.approx(1.5)
    assert expiry(limit, states[0], T0 + 1.0) == pytest.approx(0.5)
    assert expiry(limit, states[0], T0 + 10.0) == 0.0


def test_expiry_of_a_quota_state_is_the_end_of_its_window() -> None:
    limit = quota(5, 3600.0, name="hourly")
    window_end = (math.floor(T0 / 3600) + 1) * 3600
    assert expiry(limit, None, T0) == pytest.approx(window_end - T0)
    _, states = decide([limit], [None], 1, T0)
    assert expiry(limit, states[0], T0) == pytest.approx(window_end - T0)
    # A state from an old window has expired.
    assert expiry(limit, states[0], window_end + 5) == 0.0
