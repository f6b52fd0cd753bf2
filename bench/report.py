"""The printed tables, the machine's description and the noise check."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
from typing import Any

import aiohttp

from bench.bars import CLOSED_LOOP_BARS
from bench.processes import Cores
from bench.variants import CLOSED_LOOP, ORDERS_VARIANTS, WRK_CONNECTIONS, WRK_THREADS


def machine_info(cores: Cores) -> dict[str, Any]:
    def version(command: list[str]) -> str | None:
        if shutil.which(command[0]) is None:
            return None
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[0] if lines else None

    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "aiohttp": aiohttp.__version__,
        "uvloop": importlib.metadata.version("uvloop"),
        "wrk": version(["wrk", "-v"]),
        "nginx": version(["nginx", "-v"]),
        "cores": {"server_under_test": cores.server, "load_and_upstreams": cores.load},
    }


def _fmt(value: object, spec: str = ".2f") -> str:
    if isinstance(value, int | float):
        return format(value, spec)
    return "-"


def print_table(report: dict[str, Any]) -> None:
    variants: dict[str, dict[str, Any]] = report["variants"]
    print()
    if any(key in variants for key in CLOSED_LOOP):
        print_closed_loop(report)
    if report.get("validation") is not None:
        print_validation(report)
    if report.get("rate_limit_open_loop") is not None:
        print_rate_limit_open_loop(report)
    if report.get("cache_ttl") is not None:
        print_cache_ttl(report)
    if any(key in variants for key in ("e", "f")):
        print_open_loop(report)
    if report.get("python_instructions") is not None:
        print_python_instructions(report["python_instructions"])
    if report["noise"]["noisy"]:
        print(
            f"warning: other programs used up to {report['noise']['max_other_processes']:.0%} "
            f"of a core during {', '.join(report['noise']['noisy'])}: those figures are noisy"
        )
        print()


def print_closed_loop(report: dict[str, Any]) -> None:
    variants: dict[str, dict[str, Any]] = report["variants"]
    rounds, round_s = report["rounds"], report["round_s"]
    print(
        f"Closed loop (wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {rounds} rounds of {round_s}s "
        f"per variant, interleaved; medians over the rounds)"
    )
    header = f"  {'':3}{'variant':<44}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    print(header + f"{'us/req':>8}{'server':>8}{'upstrm':>8}{'core0':>7}{'core1':>7}{'other':>7}")
    measured = []
    for key in CLOSED_LOOP:
        v = variants.get(key)
        if v is None:
            continue
        if "cpu" not in v:
            print(f"  {key:<3}{v['name']:<44}{v.get('error') or v.get('skipped')}")
            continue
        measured.append(key)
        cpu = v["cpu"]
        errors = v["non_2xx"] + v["socket_errors"]
        print(
            f"  {key:<3}{v['name']:<44}{_fmt(v['rps'], '.0f'):>8}{_fmt(v.get('p50_ms')):>9}"
            f"{_fmt(v.get('p99_ms')):>9}{errors:>8}"
            f"{_fmt(v.get('server_cpu_us_per_request'), '.0f'):>8}"
            f"{_fmt(cpu['processes'].get('server'), '.0%'):>8}"
            f"{_fmt(cpu['processes'].get('upstream'), '.0%'):>8}"
            f"{_fmt(cpu['cores'].get('cpu0'), '.0%'):>7}{_fmt(cpu['cores'].get('cpu1'), '.0%'):>7}"
            f"{_fmt(cpu['other_processes_max'], '.0%'):>7}"
        )
        if "error" in v:
            print(f"     FAILED after {len(v['rounds'])} rounds: {v['error']}")
    if measured:
        print("  per round, in round order (req/s, p50 ms, server us/req):")
        for key in measured:
            runs = "  ".join(
                f"{run['rps']:>7.0f} {_fmt(run.get('p50_ms')):>6} "
                f"{_fmt(run.get('server_cpu_us_per_request'), '.0f'):>4}"
                for run in variants[key]["rounds"]
            )
            print(f"    {key:<3}{runs}")
        j = variants.get("j")
        if j is not None and "j" in measured:
            decisions = " ".join(str(run.get("redis_decisions", "-")) for run in j["rounds"])
            responses = " ".join(str(run.get("requests", "-")) for run in j["rounds"])
            print(
                f"  j's redis-server: {_fmt(j['cpu']['processes'].get('redis'), '.0%')} of "
                f"core 1; decisions per round {decisions} (responses {responses})"
            )
        for key in ORDERS_VARIANTS:
            if key not in measured:
                continue
            made = " ".join(str(run.get("orders_created", "-")) for run in variants[key]["rounds"])
            responses = " ".join(str(run.get("requests", "-")) for run in variants[key]["rounds"])
            print(f"  {key}: orders created upstream per round {made} (responses {responses})")
    for name, ratio in report["ratios"].items():
        if ratio is None:
            continue
        line = f"  {name}: rps x{ratio['rps']:.3f} {_rounds(ratio, 'rps')}"
        for figure, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
            if figure in ratio:
                line += f", {label} x{ratio[figure]:.2f}"
        if "requests_per_server_cpu_s" in ratio:
            line += (
                f", req per server CPU-s x{ratio['requests_per_server_cpu_s']:.3f} "
                f"{_rounds(ratio, 'requests_per_server_cpu_s')}"
            )
        print(line)
    for name in report["bars"]:
        if name in CLOSED_LOOP_BARS:
            _print_bar(report, name, ".3f")
    print()


def print_validation(report: dict[str, Any]) -> None:
    cost: dict[str, Any] = report["validation"]
    print(f"Validation (n - m, same rounds; {cost.get('body_bytes') or '-'} B body)")
    if "skipped" in cost:
        print(f"  skipped: {cost['skipped']}")
    added = cost.get("added", {})
    for figure, label, unit in (
        ("p50_ms", "p50", "ms"),
        ("p90_ms", "p90", "ms"),
        ("p99_ms", "p99", "ms"),
        ("server_cpu_us_per_request", "server CPU", "us/req"),
    ):
        if figure in added:
            per_round = " ".join(f"{value:+.3f}" for value in cost["per_round"][figure])
            print(f"  {label:<11}{added[figure]:+9.3f} {unit:<7}[{per_round}]")
    micro = cost.get("microbenchmark")
    if micro is not None and "error" in micro:
        print(f"  validator in-process: FAILED: {micro['error']}")
    elif micro is not None:
        print(
            f"  validator in-process ({micro['body_bytes']} B): "
            f"{micro['validate']['us_median']:.1f} us per call "
            f"(fastest repeat {micro['validate']['us_min']:.1f}); orjson.loads "
            f"{micro['orjson_loads']['us_median']:.1f} us"
        )
    outcome = report["bars"].get("validation_added_p50")
    if outcome is not None:
        if outcome.get("per_round"):
            per_round = " ".join(f"{value:+.3f}" for value in outcome["per_round"])
            print(f"  open loop, n p50 - m p50 per round (ms): [{per_round}]")
        _print_bar(report, "validation_added_p50", ".3f")
    print()


def print_rate_limit_open_loop(report: dict[str, Any]) -> None:
    measured: dict[str, Any] = report["rate_limit_open_loop"]
    print(f"Rate limit, open loop ({measured['tool']})")
    _print_reasons(measured)
    if "j" in measured and "ratelimit_ms" in measured["j"]:
        rl = measured["j"]["ratelimit_ms"]
        print(
            f"  j  Server-Timing ratelimit;dur=: p50 {rl['p50']:.2f}  p90 {rl['p90']:.2f}  "
            f"p99 {rl['p99']:.2f}  max {rl['max']:.2f}  mean {rl['mean']:.3f} ms "
            f"({rl['samples']} responses, {measured['j']['redis_decisions']} Redis decisions)"
        )
    for key in ("j", "d"):
        v = measured.get(key)
        if v is None:
            continue
        print(
            f"  {key}  end to end (achieved {v['achieved_rate']:g} req/s): "
            f"p50 {v['p50_ms']:.2f}  p90 {v['p90_ms']:.2f}  p99 {v['p99_ms']:.2f}  "
            f"max {v['max_ms']:.2f} ms  errors {v['errors']}  "
            f"server {_fmt(v.get('server_cpu_us_per_request'), '.0f')} us/req  "
            f"send lag p99 {v['send_lag_p99_ms']:.2f} ms"
        )
    if "end_to_end" in measured:
        print(
            "  j - d: "
            + ", ".join(
                f"{figure[:-3]} {e['j_minus_d']:+.2f} ms (x{_fmt(e['j_over_d'])})"
                for figure, e in measured["end_to_end"].items()
            )
        )
    _print_bar(report, "rate_limit_added_p50", ".2f")
    print()


def print_cache_ttl(report: dict[str, Any]) -> None:
    measured: dict[str, Any] = report["cache_ttl"]
    print(f"Cache TTL ({measured['tool']}, ttl {measured['ttl_s']}s)")
    _print_reasons(measured)
    if "upstream_requests" in measured:
        print(
            f"  {measured['requests']} responses (achieved {measured['achieved_rate']:g} "
            f"req/s, p50 {measured['p50_ms']:.2f}  p99 {measured['p99_ms']:.2f} ms), "
            f"{measured['upstream_requests']} upstream requests (limit {measured['limit']})"
        )
    _print_bar(report, "cache_ttl_upstream_load", "")
    print()


def _rounds(ratio: dict[str, Any], figure: str) -> str:
    """The per-round values behind a median ratio, e.g. ``[0.91 0.95 0.93]``."""
    return "[" + " ".join(f"{value:.2f}" for value in ratio["per_round"][figure]) + "]"


def print_open_loop(report: dict[str, Any]) -> None:
    variants: dict[str, dict[str, Any]] = report["variants"]
    print("Open loop (gateway.loadgen)")
    for key in ("e", "f"):
        v = variants.get(key)
        if v is None:
            continue
        if "error" in v:
            print(f"  {key:<3}{v['name']:<34}{v['error']}")
            continue
        print(
            f"  {key:<3}{v['name']:<34}{v['rate']:g} req/s (achieved {v['achieved_rate']:g}): "
            f"p50 {v['p50_ms']:.2f}  p90 {v['p90_ms']:.2f}  p99 {v['p99_ms']:.2f}  "
            f"max {v['max_ms']:.2f} ms  errors {v['errors']}  partial {v['partial_share']:.1%}"
        )
        for bar, outcome in v["bars"].items():
            print(f"      bar {bar}: {'PASS' if outcome['pass'] else 'FAIL'} ({outcome['value']})")
    print()


#: Other programs' CPU use (share of one core) above which a variant is flagged noisy.
NOISE_THRESHOLD = 0.05


def noise(variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    # The closed-loop variants' worst round counts: a median can hide a noisy one.
    shares = {
        key: v["cpu"].get("other_processes_max", v["cpu"]["other_processes"])
        for key, v in variants.items()
        if "cpu" in v
    }
    return {
        "threshold": NOISE_THRESHOLD,
        "max_other_processes": max(shares.values(), default=0.0),
        "noisy": [key for key, share in shares.items() if share > NOISE_THRESHOLD],
    }


def _print_bar(report: dict[str, Any], name: str, spec: str) -> None:
    """``  bar NAME (RULE): PASS (VALUE)``, the value formatted with ``spec``; nothing
    when the bar was not measured."""
    outcome = report["bars"].get(name)
    if outcome is None:
        return
    print(
        f"  bar {name} ({outcome['rule']}): "
        f"{'PASS' if outcome['pass'] else 'FAIL'} ({outcome['value']:{spec}})"
    )


def _print_reasons(measured: dict[str, Any]) -> None:
    """Why a measurement is missing: ``  skipped: ...`` and ``  error: ...``, if so."""
    for reason in ("skipped", "error"):
        if reason in measured:
            print(f"  {reason}: {measured[reason]}")


def print_python_instructions(counted: dict[str, Any]) -> None:
    print("Python instructions per request (bench.pycost: the same on any machine; C not counted)")
    if "error" in counted:
        print(f"  not counted: {counted['error']}")
        print()
        return
    print("  " + "  ".join(f"{key} {value:.0f}" for key, value in counted["counts"].items()))
    for pair, extra in counted["added"].items():
        more, base = pair.split("_minus_")
        print(f"  {more} - {base}: {extra['instructions']:+.0f} ({extra['share']:+.1%})")
    print()
