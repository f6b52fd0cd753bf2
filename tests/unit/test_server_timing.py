"""``Server-Timing``: each upstream call, each waiting policy, the gateway's own time."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.context import Deadline, ManualClock, RequestContext
from gateway.loadgen import parse_server_timing
from gateway.observability import server_timing
from gateway.pipeline import CompiledRoute


async def _unused(ctx: RequestContext) -> web.StreamResponse:
    raise AssertionError("not called")


def _context(
    timings: list[tuple[str, float, str]],
    upstream_wait: float,
    policy_timings: list[str] | None = None,
) -> RequestContext:
    clock = ManualClock()
    route = CompiledRoute("r", "/", ("GET",), "proxy", 0.05, _unused)
    return RequestContext(
        request=make_mocked_request("GET", "/"),
        route=route,
        params={},
        path="/",
        query="",
        request_id="id",
        deadline=Deadline.after(0.05, clock),
        started=clock.monotonic(),
        timings=timings,
        upstream_wait=upstream_wait,
        policy_timings=policy_timings or [],
    )


def test_no_upstream_call_is_all_the_gateways_time() -> None:
    assert server_timing(_context([], 0.0), 0.00125) == "gateway;dur=1.2, total;dur=1.2"


def test_one_call_then_the_gateway_then_the_total() -> None:
    ctx = _context([("users", 0.0123, "ok")], 0.0123)
    assert server_timing(ctx, 0.0141) == (
        'users;dur=12.3;desc="ok", gateway;dur=1.8, total;dur=14.1'
    )


def test_several_calls_and_a_policy_that_waited() -> None:
    ctx = _context(
        [("user", 0.004, "ok"), ("recs", 0.05, "timeout")],
        0.05,
        ["ratelimit;dur=0.42"],
    )
    value = server_timing(ctx, 0.052)
    assert parse_server_timing(value) == [
        ("user", 4.0, "ok"),
        ("recs", 50.0, "timeout"),
        ("ratelimit", 0.42, None),
        ("gateway", 2.0, None),
        ("total", 52.0, None),
    ]


def test_the_gateways_own_time_is_never_negative() -> None:
    # Waits measured on a finer clock than the total can add up to a little more.
    ctx = _context([("users", 0.0101, "ok")], 0.0101)
    assert server_timing(ctx, 0.0100).endswith("gateway;dur=0.0, total;dur=10.0")


def test_one_call_and_a_policy_that_waited() -> None:
    ctx = _context([("users", 0.003, "ok")], 0.003, ["ratelimit;dur=0.21"])
    assert server_timing(ctx, 0.004) == (
        'users;dur=3.0;desc="ok", ratelimit;dur=0.21, gateway;dur=1.0, total;dur=4.0'
    )


def test_a_policy_that_waited_without_an_upstream_call() -> None:
    ctx = _context([], 0.0, ["ratelimit;dur=0.21"])
    assert server_timing(ctx, 0.001) == "ratelimit;dur=0.21, gateway;dur=1.0, total;dur=1.0"
