"""The bars: each measured figure against its floor or ceiling, pass or fail."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.rounds import is_number
from bench.variants import (
    BAR_CACHE_SPEEDUP,
    BAR_IDEMPOTENCY_MEMORY,
    BAR_RATE_LIMIT_ADDED_P50_MS,
    BAR_VALIDATION_ADDED_P50_MS,
    CACHE_TTL_S,
    WRK_CONNECTIONS,
)


@dataclass(frozen=True)
class RatioBar:
    """A bar on the median per-round rps ratio ``x_over_y``: it is at least ``floor``."""

    ratio: str
    floor: float
    what: str


#: The closed-loop bars: the proxy route keeps at least 0.9 of the bare proxy's req/s;
#: authentication (API key, cached JWT) costs the route at most 15 % and 20 % of its own;
#: a rate limit decided on every request costs it at most 5 % (in memory) and 20 % (one
#: Redis round trip); idempotency keys in memory cost the POST route at most 15 %.
CLOSED_LOOP_BARS = {
    "proxy_throughput": RatioBar("d_over_b", 0.9, "d/b"),
    "api_key_auth": RatioBar("g_over_d", 0.85, "g/d"),
    "jwt_auth": RatioBar("h_over_d", 0.8, "h/d"),
    "rate_limit_memory": RatioBar("i_over_d", 0.95, "i/d"),
    "rate_limit_redis": RatioBar("j_over_d", 0.8, "j/d"),
    "idempotency_memory": RatioBar("l_over_k", BAR_IDEMPOTENCY_MEMORY, "l/k"),
    "cache_hit": RatioBar("o_over_d", BAR_CACHE_SPEEDUP, "o/d"),
    "not_modified": RatioBar("p_over_d", BAR_CACHE_SPEEDUP, "p/d"),
    # Metrics, tracing and the access log together cost the proxy route at most 10 %.
    "observability": RatioBar("r_over_q", 0.9, "r/q"),
}


def closed_loop_bars(ratio: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """Each bar of CLOSED_LOOP_BARS whose two variants were both measured."""
    out = {}
    for name, bar in CLOSED_LOOP_BARS.items():
        measured = ratio.get(bar.ratio)
        if measured is None or not is_number(measured.get("rps")):
            continue
        value = measured["rps"]
        out[name] = {
            "pass": value >= bar.floor,
            "value": value,
            "rule": f"median over rounds of {bar.what} req/s in the same round >= {bar.floor:g}",
            "per_round": measured["per_round"]["rps"],
        }
    return out


def validation_bars(
    cost: dict[str, Any] | None, open_loop: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """validation_added_p50: n p50 - m p50 under the open loop of POSTs when it ran (the
    latency validation adds to a request); else the closed-loop median, saturated."""
    if open_loop is not None and "added_p50_ms" in open_loop:
        value = open_loop["added_p50_ms"]
        return {
            "validation_added_p50": {
                "pass": value <= BAR_VALIDATION_ADDED_P50_MS,
                "value": value,
                "rule": (
                    f"median over {len(open_loop.get('rounds') or [])} alternating rounds of "
                    f"n p50 - m p50 (ms), open loop of POSTs at {open_loop['rate']:g} req/s, "
                    f"<= {BAR_VALIDATION_ADDED_P50_MS:g}"
                ),
                "per_round": open_loop.get("added_p50_ms_per_round"),
                "closed_loop_added_p50_ms": (cost or {}).get("added", {}).get("p50_ms"),
                "server_cpu_added_us": (cost or {})
                .get("added", {})
                .get("server_cpu_us_per_request"),
            }
        }
    if cost is None or "p50_ms" not in cost.get("added", {}):
        return {}
    value = cost["added"]["p50_ms"]
    return {
        "validation_added_p50": {
            "pass": value <= BAR_VALIDATION_ADDED_P50_MS,
            "value": value,
            "rule": (
                f"median over rounds of n p50 - m p50 (ms, wrk -c{WRK_CONNECTIONS}, same "
                f"round) <= {BAR_VALIDATION_ADDED_P50_MS:g}"
            ),
            "per_round": cost["per_round"]["p50_ms"],
            "server_cpu_added_us": cost["added"].get("server_cpu_us_per_request"),
        }
    }


def rate_limit_open_loop_bars(measured: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """rate_limit_added_p50, when j's open loop ran: its ratelimit entries' p50."""
    if measured is None or "ratelimit_ms" not in measured.get("j", {}):
        return {}
    figures = measured["j"]["ratelimit_ms"]
    return {
        "rate_limit_added_p50": {
            "pass": figures["p50"] <= BAR_RATE_LIMIT_ADDED_P50_MS,
            "value": figures["p50"],
            "rule": (
                f"p50 of j's Server-Timing ratelimit;dur= (ms), open loop at "
                f"{measured['rate']:g} req/s, <= {BAR_RATE_LIMIT_ADDED_P50_MS:g}"
            ),
            "p99": figures["p99"],
        }
    }


def cache_ttl_limit(duration: float) -> int:
    """The most upstream requests one key may cost over ``duration``: one per TTL, plus
    one for a refresh that straddles the run's edge."""
    return math.ceil(duration / CACHE_TTL_S - 1e-9) + 1


def cache_ttl_bars(measured: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """cache_ttl_upstream_load, when the TTL check ran: upstream requests <= the limit."""
    if measured is None or "upstream_requests" not in measured:
        return {}
    value = measured["upstream_requests"]
    return {
        "cache_ttl_upstream_load": {
            "pass": value <= measured["limit"],
            "value": value,
            "rule": (
                f"upstream requests for one key under an open loop at {measured['rate']:g} "
                f"req/s for {measured['duration_s']:g}s, ttl {CACHE_TTL_S}s, <= "
                f"ceil(duration / ttl) + 1 = {measured['limit']}"
            ),
        }
    }


def bar_outcome(passed: bool, value: float) -> dict[str, Any]:
    return {"pass": passed, "value": value}
