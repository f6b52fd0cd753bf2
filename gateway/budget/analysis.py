"""The samples of a run turned into the figures of the budget report. Pure: no I/O.

The gateway's ``Server-Timing`` (``gateway/observability.py``) is read as:

- ``name;dur=12.3;desc="ok"``: one upstream call; ``desc`` is its outcome (``ok``,
  ``timeout``, ``error``, ``status``, ``cancelled``, see ``docs/fan-out.md``)
- ``name;dur=0.05``: the time of a policy that reports one (``ratelimit``)
- ``gateway;dur=0.3``: the gateway's own time, everything but waiting on upstreams
- ``total;dur=50.3``: the whole request inside the gateway

so an entry with a ``desc`` is an upstream call and one without is a policy. All
durations here are milliseconds; percentiles are nearest-rank (``loadgen.percentile``),
so every figure is a latency that was actually observed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..loadgen import LoadResult, Sample, parse_server_timing, percentile

__all__ = [
    "BackendFigures",
    "Bar",
    "Figures",
    "Histogram",
    "Spread",
    "Timing",
    "Waterfall",
    "analyse",
    "read_timing",
]

OWN_TIME = "gateway"
TOTAL = "total"
#: Outcomes in the order tables list them; others seen follow, alphabetically.
OUTCOMES = ("ok", "timeout", "error", "status", "cancelled")
#: About this many histogram bins; the exact number follows from a round bin width.
_HISTOGRAM_BINS = 80


@dataclass(frozen=True, slots=True)
class Spread:
    """Percentiles of one set of durations, in milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        ordered = sorted(values)
        return cls(
            count=len(ordered),
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1],
        )


@dataclass(frozen=True, slots=True)
class Timing:
    """One response's ``Server-Timing``, sorted by kind of entry."""

    #: (backend, ms, outcome) for each upstream call, in the order the gateway wrote them.
    calls: tuple[tuple[str, float, str], ...]
    #: (policy, ms) in the order the policies ran.
    policies: tuple[tuple[str, float], ...]
    own_ms: float | None
    total_ms: float | None


def read_timing(header: str) -> Timing:
    """Sort a ``Server-Timing`` value into calls, policies, own time and total.

    Entries without a duration are skipped: they say nothing about where time went.
    """
    calls: list[tuple[str, float, str]] = []
    policies: list[tuple[str, float]] = []
    own: float | None = None
    total: float | None = None
    for name, dur, desc in parse_server_timing(header):
        if dur is None:
            continue
        if name == TOTAL:
            total = dur
        elif name == OWN_TIME:
            own = dur
        elif desc is not None:
            calls.append((name, dur, desc))
        else:
            policies.append((name, dur))
    return Timing(tuple(calls), tuple(policies), own, total)


@dataclass(frozen=True, slots=True)
class BackendFigures:
    """One backend's calls over the run."""

    name: str
    latency: Spread
    #: How many calls ended in each outcome (``ok``, ``timeout``, ...).
    outcomes: dict[str, int]
    #: Responses in which this call was the last to end (ties count for each backend).
    slowest: int
    #: Over-budget responses in which this call was the last to end: the requests whose
    #: budget this backend spent.
    spent_budget: int


@dataclass(frozen=True, slots=True)
class Histogram:
    """Client latencies in bins of ``bin_ms``: bin ``i`` is ``[i * bin_ms, (i + 1) * bin_ms)``."""

    bin_ms: float
    counts: tuple[int, ...]
    #: Latencies at or past the last bin's end, left out so a few stragglers (a client
    #: timeout at 5 s) do not squash the rest into one bar.
    beyond: int

    @property
    def upper_ms(self) -> float:
        return self.bin_ms * len(self.counts)


@dataclass(frozen=True, slots=True)
class Bar:
    """One row of a waterfall."""

    name: str
    #: ``client`` (scheduled send to last byte), ``total`` (inside the gateway),
    #: ``policy``, ``call`` (an upstream call) or ``own`` (the gateway's own time).
    kind: str
    start_ms: float
    dur_ms: float
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Waterfall:
    """Where one request's time went, from its ``Server-Timing``.

    Server-Timing gives durations, not start times, so positions are reconstructed:
    policies run one after the other from the start, upstream calls all start when the
    policies are done (a fan-out calls every backend at once; their ``dur`` runs from
    the fan-out's start), and ``client``, ``total`` and ``own`` start at zero. The
    gateway's own time is a sum of pieces (routing, assembly, encoding), not one span.
    """

    #: ``median`` or ``slowest``.
    which: str
    #: Seconds after the run's start at which this request was due.
    scheduled_s: float
    latency_ms: float
    status: int | None
    partial: str | None
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class Figures:
    """Everything the table, the report and the JSON output show."""

    url: str
    method: str
    rate: float
    #: The duration asked for, and how long the run took (first send to last answer).
    duration_s: float
    elapsed_s: float
    #: The run was stopped early (Ctrl-C); the figures cover the requests sent until then.
    stopped: bool
    #: Requests still in flight when the run was abandoned (a second Ctrl-C); they are
    #: in no figure.
    abandoned: int
    budget_ms: float
    requests: int
    responses: int
    #: Requests that got no response at all (client timeout, refused, reset).
    failures: int
    #: Count per status, and per failure as ``error:<kind>``.
    statuses: dict[str, int]
    #: Client latencies, from each request's scheduled send time to its last byte.
    latency: Spread | None
    #: ``total`` and ``gateway`` (own time) from Server-Timing.
    server_total: Spread | None
    own_time: Spread | None
    policies: dict[str, Spread]
    backends: tuple[BackendFigures, ...]
    #: Requests whose client latency was over the budget, and their share of requests.
    over_budget: int
    over_budget_share: float
    #: Responses with ``Gateway-Partial``, and their share of responses.
    partial: int
    partial_share: float
    #: How many responses named each part missing in ``Gateway-Partial``.
    partial_parts: dict[str, int]
    #: The backend that spent the budget most often (see ``BackendFigures.spent_budget``).
    spent_by: str | None
    histogram: Histogram
    median: Waterfall | None
    slowest: Waterfall | None
    achieved_rate: float
    #: How late the generator sent, p99: large values mean the figures are partly about
    #: the generator's own machine.
    send_lag_p99_ms: float


def analyse(
    result: LoadResult, budget_s: float, *, method: str = "GET", abandoned: int = 0
) -> Figures:
    """The figures of one run against a budget of ``budget_s`` seconds."""
    if not (budget_s > 0 and math.isfinite(budget_s)):
        raise ValueError(f"budget must be a positive number of seconds, got {budget_s}")
    budget_ms = budget_s * 1000.0
    samples = result.samples
    latencies = [sample.latency_s * 1000.0 for sample in samples]
    timings = [
        read_timing(sample.server_timing) if sample.server_timing is not None else None
        for sample in samples
    ]

    calls: dict[str, list[float]] = {}
    outcomes: dict[str, dict[str, int]] = {}
    slowest: dict[str, int] = {}
    spent: dict[str, int] = {}
    policies: dict[str, list[float]] = {}
    own: list[float] = []
    totals: list[float] = []
    over_budget = 0
    for latency, timing in zip(latencies, timings, strict=True):
        over = latency > budget_ms
        over_budget += over
        if timing is None:
            continue
        for name, ms, outcome in timing.calls:
            calls.setdefault(name, []).append(ms)
            counts = outcomes.setdefault(name, {})
            counts[outcome] = counts.get(outcome, 0) + 1
        for name in _last_to_end(timing):
            slowest[name] = slowest.get(name, 0) + 1
            if over:
                spent[name] = spent.get(name, 0) + 1
        for name, ms in timing.policies:
            policies.setdefault(name, []).append(ms)
        if timing.own_ms is not None:
            own.append(timing.own_ms)
        if timing.total_ms is not None:
            totals.append(timing.total_ms)

    backends = tuple(
        BackendFigures(
            name=name,
            latency=_spread(values),
            outcomes=_ordered_outcomes(outcomes[name]),
            slowest=slowest.get(name, 0),
            spent_budget=spent.get(name, 0),
        )
        for name, values in calls.items()
    )
    # max() keeps the first of equals: on a tie the backend listed first is named.
    top = max(backends, key=lambda backend: backend.spent_budget, default=None)
    spent_by = top.name if top is not None and top.spent_budget > 0 else None

    responses = result.responses
    partial = sum(1 for sample in samples if sample.partial is not None)
    median, slowest_request = _waterfalls(samples, latencies, timings)
    return Figures(
        url=result.url,
        method=method,
        rate=result.rate,
        duration_s=result.duration,
        elapsed_s=result.elapsed_s,
        stopped=result.stopped,
        abandoned=abandoned,
        budget_ms=budget_ms,
        requests=len(samples),
        responses=responses,
        failures=len(samples) - responses,
        statuses=result.status_counts(),
        latency=Spread.of(latencies),
        server_total=Spread.of(totals),
        own_time=Spread.of(own),
        policies={name: _spread(values) for name, values in policies.items()},
        backends=backends,
        over_budget=over_budget,
        over_budget_share=over_budget / len(samples) if samples else 0.0,
        partial=partial,
        partial_share=partial / responses if responses else 0.0,
        partial_parts=_partial_parts(sample.partial for sample in samples),
        spent_by=spent_by,
        histogram=histogram(latencies, budget_ms),
        median=median,
        slowest=slowest_request,
        achieved_rate=result.achieved_rate,
        send_lag_p99_ms=result.send_lag(99) * 1000.0,
    )


def _spread(values: Sequence[float]) -> Spread:
    spread = Spread.of(values)
    assert spread is not None  # only called with the values of something seen
    return spread


def _last_to_end(timing: Timing) -> list[str]:
    """The calls the response waited for last: all of them on a tie (at the budget,
    several timed-out calls end together)."""
    if not timing.calls:
        return []
    longest = max(ms for _, ms, _ in timing.calls)
    return [name for name, ms, _ in timing.calls if ms == longest]


def _ordered_outcomes(counts: dict[str, int]) -> dict[str, int]:
    known = [name for name in OUTCOMES if name in counts]
    others = sorted(name for name in counts if name not in OUTCOMES)
    return {name: counts[name] for name in (*known, *others)}


def _partial_parts(headers: Iterable[str | None]) -> dict[str, int]:
    """``recommendations;reason=timeout, orders;reason=status`` -> a count per part."""
    counts: dict[str, int] = {}
    for header in headers:
        if header is None:
            continue
        for item in header.split(","):
            name = item.partition(";")[0].strip()
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts


def histogram(latencies_ms: Sequence[float], budget_ms: float) -> Histogram:
    """Bins of a round width over the latencies, always reaching past the budget.

    The range ends at the largest latency unless that is far out (more than three
    times the larger of the budget and p99), so one stray 5 s timeout does not make
    every other bar one pixel wide; what lies past the range is counted in ``beyond``.
    """
    if latencies_ms:
        reach = max(budget_ms, percentile(latencies_ms, 99)) * 3.0
        top = max(budget_ms * 1.2, min(max(latencies_ms), reach))
    else:
        top = budget_ms * 1.2
    width = nice_step(top / _HISTOGRAM_BINS)
    # One bin more than top/width needs, so the largest latency itself is inside.
    bins = math.floor(top / width) + 1
    counts = [0] * bins
    beyond = 0
    for value in latencies_ms:
        index = int(value // width)
        if index >= bins:
            beyond += 1
        else:
            counts[max(0, index)] += 1
    return Histogram(width, tuple(counts), beyond)


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least ``raw``."""
    if not (raw > 0 and math.isfinite(raw)):
        raise ValueError(f"a step must be a positive number, got {raw}")
    power = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1.0, 2.0, 2.5, 5.0):
        # The tolerance stops float noise (0.30000000000000004) from skipping a step.
        if multiple * power >= raw * (1 - 1e-9):
            return multiple * power
    return 10.0 * power


def _waterfalls(
    samples: Sequence[Sample], latencies: Sequence[float], timings: Sequence[Timing | None]
) -> tuple[Waterfall | None, Waterfall | None]:
    """The median and the slowest of the requests that carried Server-Timing."""
    timed = sorted(
        (latency, index)
        for index, (latency, timing) in enumerate(zip(latencies, timings, strict=True))
        if timing is not None
    )
    if not timed:
        return None, None
    # The nearest-rank median, as in the table, so the waterfall is that request.
    median_index = timed[max(1, math.ceil(len(timed) / 2)) - 1][1]
    slowest_index = timed[-1][1]

    def waterfall(which: str, index: int) -> Waterfall:
        timing = timings[index]
        assert timing is not None  # ``timed`` holds only requests with a timing
        return _waterfall(which, samples[index], latencies[index], timing)

    return waterfall("median", median_index), waterfall("slowest", slowest_index)


def _waterfall(which: str, sample: Sample, latency_ms: float, timing: Timing) -> Waterfall:
    bars = [Bar("client", "client", 0.0, latency_ms)]
    if timing.total_ms is not None:
        bars.append(Bar(TOTAL, "total", 0.0, timing.total_ms))
    at = 0.0
    for name, ms in timing.policies:
        bars.append(Bar(name, "policy", at, ms))
        at += ms
    bars.extend(Bar(name, "call", at, ms, outcome) for name, ms, outcome in timing.calls)
    if timing.own_ms is not None:
        bars.append(Bar(OWN_TIME, "own", 0.0, timing.own_ms))
    return Waterfall(
        which=which,
        scheduled_s=sample.scheduled,
        latency_ms=latency_ms,
        status=sample.status,
        partial=sample.partial,
        bars=tuple(bars),
    )
