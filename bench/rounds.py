"""The interleaved rounds: their order and length, medians and same-round ratios."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

#: The order of the closed-loop variants in round 1; round 2 runs them backwards, round 3
#: forwards again, and so on. d sits between i and j, with b, o, p, g and h next to
#: them, k next to l, n next to m and q next to r, so that the runs behind the barred
#: comparisons (d/b, o/d, p/d, g/d, h/d, i/d, j/d, l/k, n - m, r/q) are as close in time
#: as the order allows, in every round: a rotation would split the pairs at its seam
#: (i first and d last a minute later). Running backwards also swaps which of a pair
#: goes first, so a machine that slows down steadily favours neither.
ROUND_ORDER = (
    *("b", "o", "i", "d", "j", "p", "g", "h", "k", "l", "n", "m", "c", "d2"),
    *("q", "r", "a"),
)
#: wrk takes whole seconds, and a run much shorter than this is mostly ramp-up.
MIN_ROUND_S = 3
DEFAULT_ROUNDS = 5
#: Per-run figures whose median over the rounds is the variant's figure.
ROUND_FIGURES = (
    "rps",
    "p50_ms",
    "p75_ms",
    "p90_ms",
    "p99_ms",
    "server_cpu_us_per_request",
    "upstream_cpu_us_per_request",
)
#: ``x_over_y`` pairs computed round by round.
RATIO_PAIRS = (
    ("d", "b"),
    ("d", "c"),
    ("d2", "b"),
    ("g", "d"),
    ("h", "d"),
    ("i", "d"),
    ("j", "d"),
    ("l", "k"),
    ("n", "m"),
    ("o", "d"),
    ("p", "d"),
    ("r", "q"),
)


def round_seconds(duration: float, rounds: int) -> int:
    """Seconds of each wrk run: ``duration`` split over the rounds, in whole seconds.

    Rounded up, so every variant is measured for at least ``duration`` in total.
    """
    return max(MIN_ROUND_S, math.ceil(duration / rounds - 1e-9))


def round_orders(keys: Sequence[str], rounds: int) -> list[list[str]]:
    """``keys`` in ROUND_ORDER, every second round backwards."""
    base = [key for key in ROUND_ORDER if key in keys]
    return [base if r % 2 == 0 else base[::-1] for r in range(rounds)]


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def median_of(values: Sequence[float], digits: int = 3) -> float | None:
    return round(statistics.median(values), digits) if values else None


def summarise_rounds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A variant's figures over its rounds: the median of each, plus the runs themselves.

    Medians rather than means: a round spoilt by another program on the machine moves
    a median of three by at most the gap to its neighbour, a mean by a third of the
    spike.
    """
    out: dict[str, Any] = {}
    for figure in ROUND_FIGURES:
        median = median_of([run[figure] for run in runs if is_number(run.get(figure))])
        if median is not None:
            out[figure] = median
    for count in ("requests", "non_2xx", "socket_errors"):
        out[count] = sum(run.get(count) or 0 for run in runs)
    cpus = [run["cpu"] for run in runs if "cpu" in run]
    if cpus:
        out["cpu"] = _median_cpu(cpus)
    out["rounds"] = list(runs)
    return out


def _median_cpu(cpus: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each CPU share's median over the rounds; other programs' also at their worst."""

    def medians(group: str) -> dict[str, float | None]:
        names = dict.fromkeys(name for cpu in cpus for name in cpu[group])
        return {
            name: median_of([cpu[group][name] for cpu in cpus if is_number(cpu[group].get(name))])
            for name in names
        }

    others: dict[str, float] = {}
    for cpu in cpus:
        for name, share in cpu["other_top"].items():
            others[name] = max(others.get(name, 0.0), share)
    return {
        "cores": medians("cores"),
        "processes": medians("processes"),
        "other_processes": median_of([cpu["other_processes"] for cpu in cpus]),
        # The noise check looks at the worst round: one noisy round is worth knowing of
        # even when the median hides it.
        "other_processes_max": max(cpu["other_processes"] for cpu in cpus),
        "other_top": others,
        "unattributed": median_of([cpu["unattributed"] for cpu in cpus]),
    }


def ratios(variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """``x_over_y`` for each pair of RATIO_PAIRS, computed within each round.

    x's and y's runs of the same round are minutes apart at most, so they share the
    machine's state of the moment; the reported ratio is the median of those per-round
    ratios (the lists are kept in ``per_round``). An rps ratio under 1 and latency
    ratios over 1 mean x is slower than y. ``requests_per_server_cpu_s`` is y's server
    CPU time per request divided by x's (b/d for d_over_b): the rps ratio the two would
    show if each were limited by its own core alone; it moves less with the machine's
    load than req/s does. None when either side is missing, skipped or in error.
    """
    return {f"{x}_over_{y}": _ratio(variants.get(x), variants.get(y)) for x, y in RATIO_PAIRS}


def _ratio(x: dict[str, Any] | None, y: dict[str, Any] | None) -> dict[str, Any] | None:
    if x is None or y is None or "rounds" not in x or "rounds" not in y:
        return None  # not run, skipped, or failed before its first round
    if "error" in x or "error" in y:
        return None  # a variant that failed mid-way has fewer rounds: no fair pairing
    per_round: dict[str, list[float]] = {
        "rps": [],
        "p50_ms": [],
        "p99_ms": [],
        "requests_per_server_cpu_s": [],
    }
    rounds = []
    for a, b in _same_rounds(x, y):
        rounds.append(a["round"])
        for figure in ("rps", "p50_ms", "p99_ms"):
            if is_number(a.get(figure)) and is_number(b.get(figure)) and b[figure]:
                per_round[figure].append(a[figure] / b[figure])
        cpu_x = a.get("server_cpu_us_per_request")
        cpu_y = b.get("server_cpu_us_per_request")
        if is_number(cpu_x) and is_number(cpu_y) and cpu_x:
            per_round["requests_per_server_cpu_s"].append(cpu_y / cpu_x)
    if not per_round["rps"]:
        return None
    out: dict[str, Any] = {
        figure: median_of(values) for figure, values in per_round.items() if values
    }
    out["per_round"] = _rounded(per_round)
    out["rounds"] = rounds
    return out


#: n's figures whose per-round difference with m's is what validation adds.
ADDED_FIGURES = ("p50_ms", "p90_ms", "p99_ms", "server_cpu_us_per_request")


def validation_cost(
    variants: dict[str, dict[str, Any]], micro: dict[str, Any] | None
) -> dict[str, Any] | None:
    """What n's validation adds to m's route: n - m, within each round, and the median.

    The latencies are wrk's, at 32 connections in a closed loop: at saturation each
    request also waits behind the others in the gateway, so a p50 difference is about
    32 x the added CPU per request when the gateway is the bottleneck. The added server
    CPU per request is the cost itself. ``microbenchmark`` is the validator alone.
    """
    m, n = variants.get("m"), variants.get("n")
    out: dict[str, Any] = {"body_bytes": None, "microbenchmark": micro}
    if m is None or n is None or "rounds" not in m or "rounds" not in n:
        return out if micro is not None else None
    if "error" in m or "error" in n:
        out["skipped"] = "m or n is in error"
        return out
    out["body_bytes"] = n.get("body_bytes")
    per_round: dict[str, list[float]] = {figure: [] for figure in ADDED_FIGURES}
    rounds = []
    for a, b in _same_rounds(n, m):
        rounds.append(a["round"])
        for figure in ADDED_FIGURES:
            if is_number(a.get(figure)) and is_number(b.get(figure)):
                per_round[figure].append(a[figure] - b[figure])
    out["added"] = {figure: median_of(values) for figure, values in per_round.items() if values}
    out["per_round"] = _rounded(per_round)
    out["rounds"] = rounds
    return out


def _same_rounds(
    x: dict[str, Any], y: dict[str, Any]
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each of x's runs with y's run of the same round, if y has one, in x's order."""
    y_runs = {run["round"]: run for run in y["rounds"]}
    for a in x["rounds"]:
        b = y_runs.get(a["round"])
        if b is not None:
            yield a, b


def _rounded(per_round: dict[str, list[float]]) -> dict[str, list[float]]:
    """The non-empty per-round lists, each value to 3 decimals."""
    return {
        figure: [round(value, 3) for value in values]
        for figure, values in per_round.items()
        if values
    }
