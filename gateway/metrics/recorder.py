"""Per-route recorders: what one request adds to the metrics, in one call.

A route's ``RouteMetrics`` is looked up by name when a Runtime is built and hung on
its ``CompiledRoute``, so a request reaches it with one attribute read. The recorders
belong to the Gateway (``RouteRecorders``), not to a Runtime: a reload hands the same
recorder to the route of the same name, and its counts carry on.

Upstream calls are read from ``ctx.timings`` after the response, not recorded where
they happen: the upstream code path stays as it was, and a request's figures are
recorded together, once.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .histogram import RATIO_BUCKETS, SECONDS_BUCKETS, Histogram

if TYPE_CHECKING:
    from ..context import RequestContext

#: The ``route`` label of requests no route matched (404, 405, 400 before routing).
NO_ROUTE = "(none)"


class RouteMetrics:
    """One route's request, upstream and fan-out figures."""

    __slots__ = ("budget_used", "name", "partial", "partial_answers", "requests", "upstream")

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

    def copy(self) -> RouteMetrics:
        """A copy that later requests do not change: what a scrape renders."""
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
        # ``Histogram.observe`` written out here (twice): this runs for every request,
        # and the two calls cost 18 bytecode instructions of about 115 (bench.pycost).
        histogram = self.requests.get(status)
        if histogram is None:
            # A new label value; status codes are a bounded set.
            histogram = self.requests[status] = Histogram(SECONDS_BUCKETS)
        histogram.counts[bisect_left(SECONDS_BUCKETS, seconds)] += 1
        histogram.sum += seconds
        if ctx is None:
            return
        timings = ctx.timings
        if timings:
            upstream = self.upstream
            for name, elapsed, outcome in timings:
                by_outcome = upstream.get(name)
                if by_outcome is None:
                    by_outcome = upstream[name] = {}
                call = by_outcome.get(outcome)
                if call is None:
                    call = by_outcome[outcome] = Histogram(SECONDS_BUCKETS)
                call.counts[bisect_left(SECONDS_BUCKETS, elapsed)] += 1
                call.sum += elapsed
        # Read from the route, not fixed here: a reload may change a route's kind.
        if ctx.route.kind == "fanout":
            self._fanout(status, seconds, ctx)

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
        return iter(list(self._routes.values()))
