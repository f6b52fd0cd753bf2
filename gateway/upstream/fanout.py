"""The fan-out terminal: N backends called at once under one deadline.

Theory of operation:
- Each backend call is a task with its own timeout: ``min(backend.timeout, what is
  left of the request's budget)``. A call never raises; it returns an ``Outcome``.
- The handler waits for the first of: every call finished, a *required* call failed
  (the answer is decided, so waiting longer is waste), or the budget ran out. Calls
  still running then are cancelled, and count as ``timeout`` (budget gone) or
  ``cancelled`` (answer already decided). A slow backend can never hold the response
  past the budget.
- Each backend learns the budget it has left from ``Gateway-Budget-Ms``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..context import RequestContext
from ..errors import problem_body
from .assemble import Outcome, Part, Reason, assemble, partial_header
from .headers import BUDGET_HEADER
from .pool import UpstreamPool
from .urls import UrlTemplate

_JSON = "application/json"
#: Request headers fan-out backends get as the client sent them. With tracing on,
#: ``traceparent`` is the gateway's own (a new span per call) and ``tracestate`` the
#: trace's, so neither is copied.
_FORWARDED_TO_BACKENDS = ("Accept-Language", "Traceparent", "Tracestate")
_FORWARDED_WHEN_TRACING = ("Accept-Language",)


class Backend:
    __slots__ = ("method", "name", "origin", "pool", "timeout", "url")

    def __init__(
        self, *, name: str, pool: UpstreamPool, url: UrlTemplate, method: str, timeout: float
    ) -> None:
        self.name = name
        self.pool = pool
        self.url = url
        self.method = method
        self.timeout = timeout


class FanoutHandler:
    __slots__ = ("_backends", "_partial_in_body", "_parts")

    def __init__(
        self, *, backends: Sequence[Backend], parts: Sequence[Part], partial_in_body: bool
    ) -> None:
        self._backends = tuple(backends)
        self._parts = tuple(parts)
        self._partial_in_body = partial_in_body

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        deadline = ctx.deadline
        clock = deadline.clock
        started = clock.monotonic()
        headers = self._backend_headers(ctx)
        tasks = [
            loop.create_task(self._call(backend, ctx, headers, started))
            for backend in self._backends
        ]
        decided = loop.create_future()
        pending = len(tasks)
        required = [part.required for part in self._parts]

        def on_done(task: asyncio.Task[Outcome], *, index: int) -> None:
            nonlocal pending
            pending -= 1
            if decided.done():
                return
            if pending == 0 or (
                required[index] and not task.cancelled() and task.result().body is None
            ):
                decided.set_result(None)

        for index, task in enumerate(tasks):
            task.add_done_callback(functools.partial(on_done, index=index))
        budget_gone = False
        try:
            async with asyncio.timeout(deadline.remaining()):
                await decided
        except TimeoutError:
            # The loop's timer may fire a hair before the clock reaches the deadline
            # (uvloop's time is coarser): the budget ran out all the same.
            budget_gone = True
        finally:
            now = clock.monotonic()
            budget_gone = budget_gone or now >= deadline.at
            outcomes = []
            for backend, task in zip(self._backends, tasks, strict=True):
                if task.done() and not task.cancelled():
                    outcomes.append(task.result())
                    continue
                task.cancel()
                reason: Reason = "timeout" if budget_gone else "cancelled"
                outcomes.append(Outcome(backend.name, None, reason, reason, now - started))
            ctx.upstream_wait += now - started
        for outcome in outcomes:
            ctx.timings.append((outcome.name, outcome.elapsed, outcome.reason or "ok"))

        assembled = assemble(self._parts, outcomes, self._partial_in_body)
        if assembled.failed is not None:
            name, reason, detail = assembled.failed
            return web.Response(
                status=assembled.status,
                body=problem_body(
                    assembled.status,
                    "Gateway timeout" if assembled.status == 504 else "Bad gateway",
                    "required-part-missing",
                    f"required part {name!r} is missing: {detail}",
                    ctx.request_id,
                    {"part": name, "reason": reason},
                ),
                content_type="application/problem+json",
            )
        response = web.Response(status=200, body=assembled.body, content_type=_JSON)
        if assembled.missing:
            response.headers["Gateway-Partial"] = partial_header(assembled.missing)
            response.headers["Cache-Control"] = "no-store"
        return response

    def _backend_headers(self, ctx: RequestContext) -> CIMultiDict[str]:
        incoming = ctx.request.headers
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Accept"] = _JSON
        headers["X-Request-Id"] = ctx.request_id
        trace = ctx.trace
        for name in _FORWARDED_TO_BACKENDS if trace is None else _FORWARDED_WHEN_TRACING:
            value = incoming.get(name)
            if value is not None:
                headers[name] = value
        if trace is not None and trace.state is not None:
            headers["tracestate"] = trace.state
        for name, value in ctx.upstream_headers:
            headers[name] = value
        return headers

    async def _call(
        self,
        backend: Backend,
        ctx: RequestContext,
        shared_headers: CIMultiDict[str],
        started: float,
    ) -> Outcome:
        clock = ctx.deadline.clock
        until = min(ctx.deadline.at, started + backend.timeout)
        allowed = max(0.0, until - clock.monotonic())
        headers = shared_headers.copy()
        headers[BUDGET_HEADER] = str(int(allowed * 1000))
        if ctx.trace is not None:
            headers["traceparent"] = ctx.trace.child()
        target = backend.pool.pick()
        url = URL(target.origin + backend.url.render(ctx.params), encoded=True)
        pool = backend.pool
        try:
            async with asyncio.timeout(allowed):
                response = await pool.send(backend.method, url, headers, allow_redirects=False)
                try:
                    body = await response.read()
                finally:
                    response.release()
                status = response.status
        except TimeoutError:
            pool.report_failure(target)
            return Outcome(backend.name, None, "timeout", "timed out", clock.monotonic() - started)
        except (aiohttp.ClientError, OSError) as exc:
            pool.report_failure(target)
            detail = f"{type(exc).__name__}"
            return Outcome(backend.name, None, "error", detail, clock.monotonic() - started)
        elapsed = clock.monotonic() - started
        pool.report_success(target)
        if not 200 <= status < 300:
            return Outcome(backend.name, None, "status", f"answered {status}", elapsed)
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return Outcome(backend.name, None, "error", "answered invalid JSON", elapsed)
        return Outcome(backend.name, body, None, "", elapsed)
