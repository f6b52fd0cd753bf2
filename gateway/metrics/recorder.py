"""Per-route recorders: what one request adds to the metrics, in one call.

A route's ``RouteMetrics`` is looked up by name when a Runtime is built and hung on
its ``CompiledRoute``, so a request reaches it with one attribute read. The recorders
belong to the Gateway (``RouteRecorders``), not to a Runtime: a reload hands the same
recorder to the route of the same name, and its counts carry on.

Upstream calls are read from ``ctx.timings`` after the response, not recorded where
they happen: the upstream code path stays as it was, and a request's figures are
recorded together, once.

A request's figures are not put into buckets on the request path: ``record`` appends
the status, the duration and the upstream calls to lists, and ``fold`` buckets a whole
batch at once with ``map``, ``bisect`` and ``Counter``, in C. A request then runs about
30 bytecode instructions here instead of about 100 (``bench.pycost``). Every reader
(a scrape, the dashboard's figures) goes through ``RouteRecorders``, which folds first,
and a recorder folds itself every ``FOLD_EVERY`` requests, so the lists stay short and
the figures are exact whenever they are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import compress
from typing import TYPE_CHECKING

from .histogram import RATIO_BUCKETS, SECONDS_BUCKETS, Histogram

if TYPE_CHECKING:
    from ..context import RequestContext

#: The ``route`` label of requests no route matched (404, 405, 400 before routing).
NO_ROUTE = "(none)"

#: Requests a recorder holds unbucketed at most. A fold of 1,024 takes about 0.1 ms:
#: short enough not to show in a response's latency, long enough to be worth a batch.
FOLD_EVERY = 1024


class RouteMetrics:
    """One route's request, upstream and fan-out figures."""

    __slots__ = (
        "_calls",
        "_pending",
        "budget_used",
        "name",
        "partial",
        "partial_answers",
        "requests",
        "upstream",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        #: Request durations by status code.
        self.requests: dict[int, Histogram] = {}
        #: Upstream call durations by backend (or upstream) name, then outcome as the
        #: upstream layer reports it (``ok``, ``timeout``, ``error``, ``status``...).
        self.upstream: dict[str, dict[str, Histogram]] = {}
        #: Fan-out only: request duration over the request's budget.
        self.budget_used = Histogram(RATIO_BUCKETS)
        #: Fan-out only: partial responses by missing part.
        self.partial: dict[str, int] = {}
        #: Fan-out only: partial responses. Not the sum of ``partial``: an answer with two
        #: parts missing counts once here, twice there.
        self.partial_answers = 0
        #: Requests not yet folded into ``requests``: status, seconds, status, seconds...
        #: (one flat list: a request adds to it with one C call and no tuple kept).
        self._pending: list[float] = []
        #: Upstream calls not yet folded into ``upstream``: ``ctx.timings`` entries.
        self._calls: list[tuple[str, float, str]] = []

    def copy(self) -> RouteMetrics:
        """A copy that later requests do not change: what a scrape renders."""
        self.fold()
        twin = RouteMetrics(self.name)
        twin.requests = {status: h.copy() for status, h in self.requests.items()}
        twin.upstream = {
            name: {outcome: h.copy() for outcome, h in by_outcome.items()}
            for name, by_outcome in self.upstream.items()
        }
        twin.budget_used = self.budget_used.copy()
        twin.partial = self.partial.copy()
        twin.partial_answers = self.partial_answers
        return twin

    def record(self, status: int, seconds: float, ctx: RequestContext | None) -> None:
        """One answered request: ``seconds`` from arrival to the end of the response."""
        pending = self._pending
        pending += (status, seconds)
        if ctx is not None:
            timings = ctx.timings
            if timings:
                self._calls += timings
            # Read from the route, not fixed here: a reload may change a route's kind.
            if ctx.route.kind == "fanout":
                self._fanout(status, seconds, ctx)
        if len(pending) >= _FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Put the requests and calls recorded since the last fold into the histograms."""
        pending = self._pending
        if pending:
            self._pending = []
            statuses = pending[0::2]
            durations = pending[1::2]
            requests = self.requests
            distinct = set(statuses)
            for status in distinct:
                histogram = requests.get(int(status))
                if histogram is None:
                    # A new label value; status codes are a bounded set.
                    histogram = requests[int(status)] = Histogram(SECONDS_BUCKETS)
                histogram.observe_all(
                    durations
                    if len(distinct) == 1
                    else list(compress(durations, map(status.__eq__, statuses)))
                )
        calls = self._calls
        if calls:
            self._calls = []
            names, elapsed, outcomes = zip(*calls, strict=True)
            keys = list(zip(names, outcomes, strict=True))
            upstream = self.upstream
            distinct_keys = set(keys)
            for key in distinct_keys:
                name, outcome = key
                by_outcome = upstream.get(name)
                if by_outcome is None:
                    by_outcome = upstream[name] = {}
                histogram = by_outcome.get(outcome)
                if histogram is None:
                    histogram = by_outcome[outcome] = Histogram(SECONDS_BUCKETS)
                histogram.observe_all(
                    elapsed
                    if len(distinct_keys) == 1
                    else list(compress(elapsed, map(key.__eq__, keys)))
                )

    def _fanout(self, status: int, seconds: float, ctx: RequestContext) -> None:
        # The budget this request had: the route's, or less if the client asked.
        budget = ctx.deadline.at - ctx.started
        if budget > 0:
            self.budget_used.observe(seconds / budget)
        if status >= 400:
            return  # a required part failed: an error, not a partial response
        # A fan-out part is present exactly when its call's outcome is ``ok``
        # (upstream/assemble.py), so the other timings are the missing parts.
        partial = self.partial
        missing = False
        for name, _, outcome in ctx.timings:
            if outcome != "ok":
                partial[name] = partial.get(name, 0) + 1
                missing = True
        if missing:
            self.partial_answers += 1


#: ``_pending`` holds two entries per request.
_FOLD_AT = 2 * FOLD_EVERY


class RouteRecorders:
    """Every route's recorder by route name, for the life of the process."""

    def __init__(self) -> None:
        self._routes: dict[str, RouteMetrics] = {}

    def route(self, name: str) -> RouteMetrics:
        recorder = self._routes.get(name)
        if recorder is None:
            recorder = self._routes[name] = RouteMetrics(name)
        return recorder

    def __iter__(self) -> Iterator[RouteMetrics]:
        """Every recorder, folded: what a reader iterates sees every request so far."""
        recorders = list(self._routes.values())
        for recorder in recorders:
            recorder.fold()
        return iter(recorders)
