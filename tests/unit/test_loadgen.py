"""The pure parts of gateway.loadgen: percentiles, Server-Timing parsing, summaries."""

from __future__ import annotations

import math

import pytest

from gateway.loadgen import LoadResult, Sample, parse_server_timing, percentile


def _sample(
    latency: float,
    status: int | None = 200,
    *,
    partial: str | None = None,
    error: str | None = None,
) -> Sample:
    return Sample(
        scheduled=0.0,
        latency_s=latency,
        status=status,
        server_timing=None,
        partial=partial,
        error=error,
    )


def _result(samples: list[Sample], elapsed: float = 1.0) -> LoadResult:
    return LoadResult(url="http://x/", rate=10, duration=1, samples=samples, elapsed_s=elapsed)


# --- percentile ----------------------------------------------------------------------


def test_percentile_is_nearest_rank_never_interpolated():
    values = [float(n) for n in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.5) == 100.0
    assert percentile(values, 100) == 100.0


def test_percentile_ignores_input_order():
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], 60) == 3.0


def test_p0_is_the_minimum_and_p100_the_maximum():
    values = [3.0, 1.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 3.0


def test_p99_of_few_samples_is_the_maximum():
    assert percentile([1.0, 2.0, 10.0], 99) == 10.0


def test_percentile_of_one_value():
    assert percentile([7.0], 50) == 7.0


@pytest.mark.parametrize("p", [-1, 100.1, math.nan])
def test_percentile_rejects_out_of_range(p):
    with pytest.raises(ValueError, match="from 0 to 100"):
        percentile([1.0], p)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


# --- parse_server_timing -----------------------------------------------------------------


def test_parses_the_gateways_own_format():
    value = 'users;dur=3.2;desc="ok", orders;dur=50.0;desc="timeout", gateway;dur=0.4'
    assert parse_server_timing(value) == [
        ("users", 3.2, "ok"),
        ("orders", 50.0, "timeout"),
        ("gateway", 0.4, None),
    ]


def test_name_only_and_unquoted_desc():
    assert parse_server_timing("miss, db;desc=primary") == [
        ("miss", None, None),
        ("db", None, "primary"),
    ]


def test_quoted_desc_keeps_separators_and_escapes():
    value = 'a;desc="x, y; z";dur=1, b;desc="say \\"hi\\""'
    assert parse_server_timing(value) == [("a", 1.0, "x, y; z"), ("b", None, 'say "hi"')]


def test_parameters_are_case_insensitive_and_spaces_tolerated():
    assert parse_server_timing('  app ; DUR = 2.5 ; Desc="x" ') == [("app", 2.5, "x")]


def test_bad_entries_do_not_lose_the_others():
    value = "a;dur=fast, , b;dur=nan, c;dur=1;unknown=7"
    assert parse_server_timing(value) == [("a", None, None), ("b", None, None), ("c", 1.0, None)]


def test_empty_header():
    assert parse_server_timing("") == []


# --- LoadResult ------------------------------------------------------------------------


def test_latencies_include_failed_requests():
    result = _result([_sample(0.001), _sample(5.0, None, error="timeout"), _sample(0.002)])
    assert result.percentile(100) == 5.0
    assert result.percentile(50) == 0.002


def test_errors_count_failures_and_5xx_but_not_4xx():
    result = _result(
        [
            _sample(0.001, 200),
            _sample(0.001, 404),
            _sample(0.001, 502),
            _sample(0.001, 504),
            _sample(0.001, None, error="ClientConnectorError"),
        ]
    )
    assert result.errors == 3
    assert result.responses == 4


def test_partial_share_is_over_responses():
    result = _result(
        [
            _sample(0.05, partial="recommendations;reason=timeout"),
            _sample(0.05, partial="recommendations;reason=timeout"),
            _sample(0.01),
            _sample(5.0, None, error="timeout"),
        ]
    )
    assert result.partial_share == pytest.approx(2 / 3)


def test_partial_share_without_responses_is_zero():
    assert _result([_sample(5.0, None, error="timeout")]).partial_share == 0.0
    assert _result([]).partial_share == 0.0


def test_achieved_rate_counts_responses_over_elapsed_time():
    samples = [_sample(0.01) for _ in range(9)] + [_sample(5.0, None, error="timeout")]
    assert _result(samples, elapsed=2.0).achieved_rate == pytest.approx(4.5)
    assert _result([], elapsed=0.0).achieved_rate == 0.0


def test_status_counts():
    result = _result([_sample(0.1, 200), _sample(0.1, 200), _sample(1.0, None, error="timeout")])
    assert result.status_counts() == {"200": 2, "error:timeout": 1}


def test_send_lag_percentiles():
    result = _result([])
    assert result.send_lag(99) == 0.0
    result.send_lags.extend([0.0, 0.001, 0.003])
    assert result.send_lag(100) == 0.003
