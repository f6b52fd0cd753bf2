"""Open-loop measurements with ``gateway.loadgen``, in this process."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from bench.processes import CpuMeter
from bench.variants import WARMUP_S
from gateway.loadgen import LoadResult, parse_server_timing, percentile, run_open_loop


def measure_open_loop(
    url: str,
    rate: float,
    duration: float,
    watch: dict[str, list[int]],
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
    warmup: float = WARMUP_S,
) -> tuple[dict[str, Any], LoadResult]:
    # The warm-up runs on the same connections, inside the measured call; the CPU meter
    # spans it too, which is harmless: it runs at the same rate, and shares are per second.
    meter = CpuMeter(watch)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(
            run_open_loop(
                url,
                rate=rate,
                duration=duration,
                headers=headers or None,
                warmup=warmup,
                method=method,
                body=body,
            )
        )
    cpu = meter.finish()
    ms = 1000.0
    summary: dict[str, Any] = {
        "tool": f"gateway.loadgen open loop, {rate:g} req/s for {duration:g}s",
        "url": url,
        "rate": rate,
        "requests": len(result.samples),
        "achieved_rate": round(result.achieved_rate, 1),
        "p50_ms": round(result.percentile(50) * ms, 3),
        "p90_ms": round(result.percentile(90) * ms, 3),
        "p99_ms": round(result.percentile(99) * ms, 3),
        "max_ms": round(result.percentile(100) * ms, 3),
        "errors": result.errors,
        "statuses": result.status_counts(),
        "partial_share": round(result.partial_share, 4),
        "send_lag_p99_ms": round(result.send_lag(99) * ms, 3),
        "send_lag_max_ms": round(result.send_lag(100) * ms, 3),
        "server_timing_ms": server_timing_summary(result),
        "cpu": cpu,
    }
    server_share = cpu["processes"].get("server")
    if server_share is not None and result.achieved_rate > 0:
        # The warm-up ran at the same rate, so the share still divides by this rate.
        summary["server_cpu_us_per_request"] = round(server_share / result.achieved_rate * 1e6, 1)
    return summary, result


def server_timing_summary(result: LoadResult) -> dict[str, dict[str, float]]:
    """p50/p99 of each Server-Timing entry: how the gateway spent each response's time."""
    by_name: dict[str, list[float]] = {}
    for sample in result.samples:
        if sample.server_timing is None:
            continue
        for name, dur, _desc in parse_server_timing(sample.server_timing):
            if dur is not None:
                by_name.setdefault(name, []).append(dur)
    return {
        name: {
            "p50": round(percentile(values, 50), 2),
            "p99": round(percentile(values, 99), 2),
        }
        for name, values in by_name.items()
    }
