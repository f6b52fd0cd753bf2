"""The proxy terminal: one request to one upstream target, bodies streamed.

Rules:
- The request body is streamed to the upstream as it arrives; a declared length over
  ``max_body_size`` is refused before anything is sent, an undeclared one (chunked) is
  cut off when it crosses the limit.
- A response body of at most ``buffer_limit`` bytes with a declared length is read
  whole before the response starts, so a short or broken body is still a clean 502;
  anything larger or of unknown length is streamed, and a failure mid-stream aborts the
  client's connection (it cannot be told apart from a complete body otherwise).
- A connect failure is retried once on another healthy target: the request never left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import HttpVersion10, HttpVersion11, web
from yarl import URL

from ..context import RequestContext
from ..errors import GatewayError, PayloadTooLarge, UpstreamError, UpstreamTimeout
from ..observability import stamp_response
from ..policies.conditional_spec import strong_etag
from .headers import (
    BUDGET_HEADER,
    downstream_response_headers,
    request_drop_set,
    upstream_request_headers,
)
from .pool import CLIENT_ERRORS, ConnectFailed, Target, UpstreamPool, client_error
from .urls import UrlTemplate

_NO_BODY_STATUSES = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ProxySettings:
    """Server-wide settings the proxy needs, resolved once per config."""

    __slots__ = (
        "buffer_limit",
        "drop",
        "forwarded",
        "max_body_size",
        "trust_forwarded",
        "via",
        "via_elements",
        "x_forwarded",
    )

    def __init__(
        self,
        *,
        via: str,
        trust_forwarded: bool,
        forwarded_headers: str,
        max_body_size: int,
        buffer_limit: int,
        identity_headers: frozenset[str] = frozenset(),
    ) -> None:
        self.drop = request_drop_set(identity_headers, trust_forwarded)
        self.via = via
        #: Our ``Via`` element by request version, made here rather than per request.
        self.via_elements = {HttpVersion11: f"1.1 {via}", HttpVersion10: f"1.0 {via}"}
        self.trust_forwarded = trust_forwarded
        self.x_forwarded = forwarded_headers in ("x-forwarded", "both")
        self.forwarded = forwarded_headers in ("forwarded", "both")
        self.max_body_size = max_body_size
        self.buffer_limit = buffer_limit


class ProxyHandler:
    __slots__ = ("_host_mode", "_path", "_pool", "_prefix", "_settings", "_timeout", "_timing_name")

    def __init__(
        self,
        *,
        pool: UpstreamPool,
        prefix: str,
        path: UrlTemplate | None,
        timeout: float,
        host_mode: str,
        settings: ProxySettings,
        timing_name: str,
    ) -> None:
        self._pool = pool
        self._prefix = prefix
        self._timing_name = timing_name
        self._path = path
        self._host_mode = host_mode
        self._settings = settings
        # ``sock_read`` bounds both the wait for the response headers and any silence
        # while the body streams; built once here, not per request.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=pool.key.pool.connect_timeout, sock_read=timeout
        )

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        request = ctx.request
        settings = self._settings
        length = request.content_length
        body: object = None
        if ctx.body is not None:
            body = ctx.body
            length = len(ctx.body)
        elif length is not None:
            if length > settings.max_body_size:
                raise PayloadTooLarge(
                    f"the request body is {length} bytes; this gateway accepts at most "
                    f"{settings.max_body_size}"
                )
            if length:
                body = request.content
        elif request.body_exists:
            body = _CappedBody(request.content, settings.max_body_size)

        via = settings.via_elements.get(request.version) or "{}.{} {}".format(
            *request.version, settings.via
        )
        headers = upstream_request_headers(
            request.headers,
            drop=settings.drop,
            trust_forwarded=settings.trust_forwarded,
            x_forwarded=settings.x_forwarded,
            forwarded=settings.forwarded,
            client_ip=request.remote or "unknown",
            scheme=request.scheme,
            via=via,
        )
        headers["X-Request-Id"] = ctx.request_id
        for name in ctx.hidden_headers:
            headers.popall(name, None)
        for name, value in ctx.upstream_headers:
            headers[name] = value
        trace = ctx.trace
        if trace is not None:
            headers["traceparent"] = trace.child()
            # A client's tracestate goes up only with the trace it belongs to.
            if trace.state is None:
                headers.popall("tracestate", None)
            else:
                headers["tracestate"] = trace.state
        remaining = ctx.deadline.remaining()
        headers[BUDGET_HEADER] = str(int(remaining * 1000))
        if length:
            headers["Content-Length"] = str(length)
        timeout = self._timeout
        if ctx.deadline.at < ctx.started + ctx.route.budget:
            # The client asked for a shorter budget than the route's own timeout.
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=timeout.sock_connect, sock_read=max(remaining, 0.001)
            )

        path_and_query = self._prefix + (
            self._path.render(ctx.params) if self._path is not None else ctx.path
        )
        query = ctx.query
        if query:
            joiner = "&" if "?" in path_and_query else "?"
            path_and_query = f"{path_and_query}{joiner}{query}"

        if body is not None and request.headers.get("Expect", "").lower() == "100-continue":
            # The client waits for our go-ahead before sending its body (RFC 9110 10.1.1).
            await request.writer.write(_CONTINUE)

        pool = self._pool
        target = pool.pick()
        host_mode = self._host_mode
        started = ctx.deadline.clock.monotonic()
        first_attempt = True
        # The call is made here rather than in a method of its own: a frame and a
        # coroutine less on every request.
        while True:
            if host_mode == "target":
                # Set here, the request need not work it out from the URL.
                headers["Host"] = target.host
            elif host_mode == "client":
                headers["Host"] = request.headers.get("Host", target.host)
            else:
                headers["Host"] = host_mode
            try:
                upstream = await pool.send(
                    request.method,
                    URL(target.origin + path_and_query, encoded=True),
                    headers,
                    data=body,
                    allow_redirects=False,
                    timeout=timeout,
                )
                break
            except CLIENT_ERRORS as exc:
                pool.report_failure(target)
                error = client_error(exc, pool.name)
                if first_attempt and isinstance(error, ConnectFailed):
                    # The request never left: another healthy target may take it.
                    retry = pool.next_after(target)
                    if retry is not None:
                        target, first_attempt = retry, False
                        continue
                failure = self._failed(ctx, started, error, body)
                if failure is not error:
                    raise failure from None
                raise error from exc
        try:
            return await self._respond(ctx, upstream, target, started, via)
        finally:
            upstream.release()

    def _failed(
        self, ctx: RequestContext, started: float, error: GatewayError, body: object
    ) -> GatewayError:
        """Record a call that failed; the error to answer with."""
        if isinstance(error, UpstreamTimeout):
            self._record(ctx, started, "timeout")
            return error
        self._record(ctx, started, "error")
        if not isinstance(error, ConnectFailed) and isinstance(body, _CappedBody) and body.exceeded:
            # aiohttp wrapped the body's own refusal: the client sent too much.
            return PayloadTooLarge(f"the request body is over {self._settings.max_body_size} bytes")
        return error

    async def current_etag(self, ctx: RequestContext) -> str | None:
        """The ETag of what the upstream holds now at this request's target (a GET),
        or None when there is nothing there. For ``If-Match`` checks on writes."""
        path = self._prefix + (
            self._path.render(ctx.params) if self._path is not None else ctx.path
        )
        if ctx.query:
            path += ("&" if "?" in path else "?") + ctx.query
        headers = {"X-Request-Id": ctx.request_id, **dict(ctx.upstream_headers)}
        for name in ("Accept", "Accept-Encoding", "Accept-Language"):
            value = ctx.request.headers.get(name)
            if value is not None:
                headers[name] = value
        if ctx.trace is not None:
            headers["traceparent"] = ctx.trace.child()
            if ctx.trace.state is not None:
                headers["tracestate"] = ctx.trace.state
        pool = self._pool
        target = pool.pick()
        try:
            async with pool.session.get(
                URL(target.origin + path, encoded=True),
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                if response.status in (404, 410):
                    return None
                if response.status != 200:
                    raise UpstreamError(
                        f"upstream {pool.name!r} answered {response.status} to the "
                        "precondition check"
                    )
                body = await response.content.read(self._settings.buffer_limit + 1)
                etag = response.headers.get("ETag")
                if etag is not None:
                    return etag
                if len(body) > self._settings.buffer_limit or not response.content.at_eof():
                    raise UpstreamError(
                        f"upstream {pool.name!r} sent no ETag for a representation too large "
                        "to hash for a precondition check"
                    )
                return strong_etag(body)
        except CLIENT_ERRORS as exc:
            raise client_error(exc, pool.name) from exc

    async def _respond(
        self,
        ctx: RequestContext,
        upstream: aiohttp.ClientResponse,
        target: Target,
        started: float,
        via: str,
    ) -> web.StreamResponse:
        request = ctx.request
        settings = self._settings
        headers = downstream_response_headers(upstream.headers, via)
        status = upstream.status
        length = upstream.content_length
        no_body = request.method == "HEAD" or status in _NO_BODY_STATUSES
        if no_body or (length is not None and length <= settings.buffer_limit):
            data = b""
            if not no_body:
                try:
                    data = await upstream.read()
                except CLIENT_ERRORS as exc:
                    self._pool.report_failure(target)
                    self._record(ctx, started, "error")
                    raise client_error(exc, self._pool.name) from exc
            self._pool.report_success(target)
            self._record(ctx, started, "ok")
            if not no_body:
                return web.Response(
                    body=data, status=status, reason=upstream.reason, headers=headers
                )
            response = web.Response(status=status, reason=upstream.reason, headers=headers)
            if length is not None and request.method == "HEAD":
                # HEAD answers with the length a GET would have had.
                response.headers["Content-Length"] = str(length)
            return response

        self._pool.report_success(target)
        self._record(ctx, started, "ok")
        streamed = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
        if length is not None:
            streamed.content_length = length
        stamp_response(ctx, streamed)
        await streamed.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await streamed.write(chunk)
        except (aiohttp.ClientError, TimeoutError):
            # The status line is gone already: the only honest signal left is to cut
            # the connection, so the client sees a truncated response, not a short one.
            self._pool.report_failure(target)
            transport = request.transport
            if transport is not None:
                transport.abort()
            return streamed
        await streamed.write_eof()
        return streamed

    def _record(self, ctx: RequestContext, started: float, outcome: str) -> None:
        elapsed = ctx.deadline.clock.monotonic() - started
        ctx.timings.append((self._timing_name, elapsed, outcome))
        ctx.upstream_wait += elapsed


class _CappedBody:
    """A chunked request body, cut off when it crosses the size limit.

    aiohttp wraps errors raised while it writes a body, so the flag tells the proxy
    afterwards that the failure was the client's oversized body (413), not the upstream.
    """

    __slots__ = ("_content", "_limit", "exceeded")

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._content.iter_any():
            seen += len(chunk)
            if seen > self._limit:
                self.exceeded = True
                raise PayloadTooLarge(f"the request body is over {self._limit} bytes")
            yield chunk
