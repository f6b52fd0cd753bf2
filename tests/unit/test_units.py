"""Human units in config: durations and sizes, parsed and formatted."""

from __future__ import annotations

import pytest

from gateway.config.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1us", 1e-6),
        ("50ms", 0.05),
        ("2s", 2.0),
        ("1.25s", 1.25),
        ("3m", 180.0),
        ("2h", 7200.0),
        (" 5ms ", 0.005),
    ],
)
def test_parse_duration_reads_a_number_with_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", [50, 0.05, True, None, "50", "fast", "ms", "50 ms", "-1s", "1e3ms", "5S"]
)
def test_parse_duration_refuses_what_is_not_a_number_with_its_unit(value: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("10B", 10),
        ("8KiB", 8192),
        ("1MiB", 1024**2),
        ("2GiB", 2 * 1024**3),
        ("8KB", 8000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
    ],
)
def test_parse_size_reads_bytes_or_a_unit(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [True, 1.5, None, "1.5KiB", "8kib", "8 XB", "lots", "-1"])
def test_parse_size_refuses_what_is_not_a_size(value: object) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(value)


def test_parse_size_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.05, "50ms"), (0.0005, "0.5ms"), (1.0, "1s"), (2.5, "2.5s"), (30.0, "30s")],
)
def test_format_duration_uses_ms_below_a_second_and_s_above(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
