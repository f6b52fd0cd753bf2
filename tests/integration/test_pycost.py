"""``bench.pycost``: Python instructions per request, as the gateway runs (uvloop, the
sample service in a process of its own), steady from one measurement to the next."""

from __future__ import annotations

from bench.pycost import measure


def test_counts_repeat_and_show_what_a_rate_limit_adds() -> None:
    first = measure(["d", "i"], requests=40)
    again = measure(["d"], requests=40)
    assert first["d"] > 1000  # a proxied request is thousands of instructions
    # The same code gives the same figure (within a few instructions in thousands:
    # whether a response arrives in one read or two can vary).
    assert abs(first["d"] - again["d"]) < 0.01 * first["d"]
    # The limiter's policy, its store's step and its two headers: a few hundred.
    assert 100 < first["i"] - first["d"] < 1000
