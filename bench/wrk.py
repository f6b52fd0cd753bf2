"""Running wrk, the closed-loop load generator, and reading its output."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.processes import Cores, CpuMeter
from bench.variants import WRK_CONNECTIONS, WRK_THREADS

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_WRK_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(text: str) -> dict[str, Any]:
    """requests/s, latency percentiles (ms) and error counts from ``wrk --latency``."""
    rps = _WRK_RPS.search(text)
    if rps is None:
        raise BenchError(f"cannot read wrk's output:\n{text}")
    out: dict[str, Any] = {"rps": round(float(rps[1]), 1)}
    for match in _WRK_PERCENTILE.finditer(text):
        out[f"p{match[1]}_ms"] = round(float(match[2]) * _WRK_UNITS[match[3]], 3)
    total = _WRK_TOTAL.search(text)
    out["requests"] = int(total[1]) if total else None
    non2xx = _WRK_NON2XX.search(text)
    out["non_2xx"] = int(non2xx[1]) if non2xx else 0
    sock = _WRK_SOCKET.search(text)
    out["socket_errors"] = sum(int(n) for n in sock.groups()) if sock else 0
    return out


def wrk(
    url: str,
    seconds: float,
    cores: Cores,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
    script_args: Sequence[str] = (),
) -> str:
    """wrk's output; ``headers`` go on every request (g's key, h's token); ``script``
    (k to n: a POST and its body) is a Lua script, given ``script_args``."""
    extra = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    if script is not None:
        extra += ["-s", str(script)]
    command = cores.wrap(
        [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{WRK_CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            *extra,
            url,
            *(["--", *script_args] if script_args else []),
        ],
        cores.load,
    )
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def measure_wrk(
    url: str,
    seconds: int,
    cores: Cores,
    watch: dict[str, list[int]],
    headers: dict[str, str] | None = None,
    script: Path | None = None,
    script_args: Sequence[str] = (),
) -> dict[str, Any]:
    """One measured wrk run (no warm-up: the caller warms each server up once)."""
    meter = CpuMeter(watch)
    text = wrk(url, seconds, cores, headers, script, script_args)
    result = parse_wrk(text)
    result["cpu"] = cpu = meter.finish()
    # CPU time per request of the server under test: unlike req/s it barely moves when
    # something else competes for the cores, so it is the steadier cost figure.
    server_share = cpu["processes"].get("server")
    if server_share is not None and result["rps"]:
        result["server_cpu_us_per_request"] = round(server_share / result["rps"] * 1e6, 1)
    upstream_share = cpu["processes"].get("upstream")
    if upstream_share is not None and result["rps"]:
        result["upstream_cpu_us_per_request"] = round(upstream_share / result["rps"] * 1e6, 1)
    return result
