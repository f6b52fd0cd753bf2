"""W3C Trace Context: which traceparent values are kept, and what goes upstream."""

from __future__ import annotations

import re

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.tracing import TraceContext, incoming_trace, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
CHILD = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_a_valid_version_00_is_kept() -> None:
    assert parse_traceparent(VALID) == (TRACE, PARENT, "01")
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00") == (TRACE, PARENT, "00")


def test_only_the_sampled_flag_goes_on() -> None:
    # Version 00 defines one flag; the others must be sent as zero.
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-ff") == (TRACE, PARENT, "01")
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-02") == (TRACE, PARENT, "00")


def test_a_higher_version_is_read_by_its_first_four_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01") == (TRACE, PARENT, "01")
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01-what-ever") == (TRACE, PARENT, "01")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00",
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 is exactly 55 characters
        f"cc-{TRACE}-{PARENT}-01extra",  # a higher version's flags end at a dash
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{PARENT}-01",  # lowercase hex only
        f"00-{TRACE}-{PARENT.upper()}-01",
        f"0g-{TRACE}-{PARENT}-01",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-1",
        f"00_{TRACE}_{PARENT}_01",
        f" {VALID}",
        f"{VALID}\n",
    ],
)
def test_invalid_values_are_refused(value: str) -> None:
    assert parse_traceparent(value) is None


def test_an_incoming_trace_keeps_its_id_and_state() -> None:
    trace = incoming_trace(headers(("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE")))
    assert (trace.trace_id, trace.parent_id, trace.flags) == (TRACE, PARENT, "01")
    assert trace.state == "congo=t61rcWkgMzE"


def test_several_tracestate_fields_are_joined_in_order() -> None:
    trace = incoming_trace(
        headers(("Traceparent", VALID), ("tracestate", "a=1"), ("TraceState", "b=2,c=3"))
    )
    assert trace.state == "a=1,b=2,c=3"


@pytest.mark.parametrize("traceparent", [None, f"00-{'0' * 32}-{PARENT}-01"])
def test_a_missing_or_invalid_traceparent_starts_a_trace_without_state(
    traceparent: str | None,
) -> None:
    pairs = [("tracestate", "congo=t61rcWkgMzE")]
    if traceparent is not None:
        pairs.append(("traceparent", traceparent))
    trace = incoming_trace(headers(*pairs))
    assert re.fullmatch(r"[0-9a-f]{32}", trace.trace_id)
    assert trace.trace_id not in (TRACE, "0" * 32)
    assert trace.parent_id is None
    assert trace.flags == "00"
    assert trace.state is None
    assert incoming_trace(headers(*pairs)).trace_id != trace.trace_id


def test_each_child_has_the_trace_id_and_a_new_span_id() -> None:
    trace = TraceContext(TRACE, PARENT, "01", None)
    children = [CHILD.fullmatch(trace.child()) for _ in range(100)]
    assert all(child is not None for child in children)
    spans = {child.group(2) for child in children if child is not None}
    assert {child.group(1) for child in children if child is not None} == {TRACE}
    assert len(spans) == 100
    assert PARENT not in spans
    assert "0" * 16 not in spans
