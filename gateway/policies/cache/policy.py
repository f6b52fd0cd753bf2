"""The response cache policy: hits, revalidation, coalescing, invalidation on writes.

Per GET/HEAD on a cached route:
- a fresh entry for this scope and these varied headers is a hit (``Age`` and
  ``Cache-Status: gateway; hit; ttl=N``); every entry carries a strong ETag (the
  upstream's or one computed when stored), so a matching ``If-None-Match`` is a 304
  straight from the entry;
- a stale entry inside ``stale-while-revalidate`` is served while one background
  refresh runs; otherwise it is revalidated with its ``ETag`` (``If-None-Match``), and
  a 304 from the upstream freshens it; an upstream failure inside ``stale-if-error``
  serves it stale;
- a miss makes one upstream call however many requests miss at once: the others wait
  for it (within their own deadline) and are served from what it stored.
A successful write invalidates the URL's entries and those of the related routes the
config names, on this node and, through Redis pub/sub, on every node.
Per-request headers (request id, Server-Timing, RateLimit) are added after this policy,
so they are never stored nor replayed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict

from ...config.model import RouteCacheSpec
from ...context import Clock, RequestContext
from ...errors import GatewayError
from ...pipeline import Handler
from ...upstream.urls import UrlTemplate
from ..conditional_spec import NOT_MODIFIED_HEADERS, none_match, strong_etag
from .spec import directives, freshness_lifetime, initial_age, stale_window, storable, vary_names
from .store import Entry, ResponseStore

log = logging.getLogger("gateway.cache")

#: Never stored: recomputed per response, or about one request only.
_NOT_STORED = frozenset(
    {
        "age",
        "cache-status",
        "x-request-id",
        "server-timing",
        "set-cookie",
        "content-length",
        "ratelimit",
        "ratelimit-policy",
    }
)
_CONDITIONAL = ("If-None-Match", "If-Modified-Since")
_NOT_MODIFIED = frozenset(name.lower() for name in NOT_MODIFIED_HEADERS)


class ResponseCache:
    """The process's cache: storage, in-flight misses, and invalidation fan-out."""

    def __init__(self, store: ResponseStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.inflight: dict[str, asyncio.Future[str]] = {}
        self._generations: dict[str, int] = {}
        self._prefix_purges = 0
        self.refreshing: set[str] = set()
        #: Called with the paths a write invalidated (the Redis publisher, if any).
        self.publish: Callable[[list[str]], None] | None = None
        #: Called with a purged path prefix (the Redis publisher, if any).
        self.publish_prefix: Callable[[str], None] | None = None
        #: Results by route name, then by outcome (``hit``, ``miss``...): the metrics'
        #: source. Kept here, not in a route's policy, so counts survive reloads.
        self.by_route: dict[str, dict[str, int]] = {}

    def route_counts(self, route: str) -> dict[str, int]:
        """The result counts of ``route``, to be incremented by its policy."""
        return self.by_route.setdefault(route, {})

    def generation(self, path: str) -> int:
        """How many times ``path`` was invalidated (by path or under a purged prefix): a
        fetch that began before the last invalidation must not store its (older) answer.

        Prefix purges are counted once for every path: a purge then stops every fetch in
        flight from storing, not only those under the prefix, which is rare and safe."""
        return self._generations.get(path, 0) + self._prefix_purges

    def invalidate(self, paths: list[str], *, announce: bool = True) -> int:
        if len(self._generations) > 100_000:
            self._generations.clear()  # bounded; only narrows a race window again
        for path in paths:
            self._generations[path] = self._generations.get(path, 0) + 1
        dropped = sum(self.store.invalidate_path(path) for path in paths)
        if announce and self.publish is not None:
            self.publish(paths)
        return dropped

    def purge_prefix(self, prefix: str, *, announce: bool = True) -> int:
        """Drop every entry under ``prefix`` here, and ask the other nodes to."""
        self._prefix_purges += 1
        dropped = self.store.purge_prefix(prefix)
        if announce and self.publish_prefix is not None:
            self.publish_prefix(prefix)
        return dropped


class CachePolicy:
    def __init__(
        self,
        cache: ResponseCache,
        spec: RouteCacheSpec | None,
        invalidates: tuple[str, ...],
        route_name: str,
    ) -> None:
        self._cache = cache
        self._spec = spec
        self._related = tuple(UrlTemplate.compile(path) for path in invalidates)
        self._route = route_name
        self._counts = cache.route_counts(route_name)

    def _count(self, outcome: str) -> None:
        counts = self._counts
        counts[outcome] = counts.get(outcome, 0) + 1

    async def handle(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        method = ctx.request.method
        if method not in ("GET", "HEAD"):
            response = await call_next(ctx)
            if 200 <= response.status < 400:
                paths = [ctx.path] + [related.render(ctx.params) for related in self._related]
                self._cache.invalidate(paths)
            return response
        if self._spec is None:
            return await call_next(ctx)
        return await self._read(ctx, call_next)

    def _primary(self, ctx: RequestContext) -> str:
        consumer = ctx.consumer
        if self._spec is not None and self._spec.scope == "public":
            scope = "public"
        else:
            scope = "c:" + consumer.id if consumer is not None else "anonymous"
        return f"{self._route}|{scope}|{ctx.path}?{ctx.query}"

    async def _read(self, ctx: RequestContext, call_next: Handler) -> web.StreamResponse:
        cache = self._cache
        request_cc = directives(ctx.request.headers.get("Cache-Control"))
        primary = self._primary(ctx)
        # The upstream must answer in full so there is something to store; the
        # conditional policy answers the client's own validators from that.
        ctx.hidden_headers.extend(_CONDITIONAL)
        entry = cache.store.lookup(primary, ctx.request.headers)
        now = cache.clock.wall()
        if entry is not None and "no-cache" not in request_cc:
            age = entry.age(now)
            if age < entry.lifetime and "no-cache" not in entry.directives:
                self._count("hit")
                status = f"hit; ttl={int(entry.lifetime - age)}"
                if_none_match = ctx.request.headers.get("If-None-Match")
                if if_none_match is not None and (
                    # The usual case first: the client sends back exactly our tag.
                    if_none_match == entry.etag
                    or if_none_match.strip() == "*"
                    or none_match(if_none_match, entry.etag)
                ):
                    # The client's copy is current: answer 304 from the entry directly,
                    # without building the full response first.
                    return _not_modified(entry, now, status)
                return _serve(entry, now, status, ctx)
            staleness = age - entry.lifetime
            if 0 <= staleness < stale_window(entry.directives, "stale-while-revalidate"):
                self._count("stale_while_revalidate")
                self._refresh_later(ctx, call_next, entry)
                return _serve(entry, now, "fwd=stale; stale-while-revalidate", ctx)
            return await self._revalidate(ctx, call_next, entry, primary, request_cc)
        return await self._miss(ctx, call_next, primary, request_cc)

    async def _miss(
        self,
        ctx: RequestContext,
        call_next: Handler,
        primary: str,
        request_cc: dict[str, str | None],
    ) -> web.StreamResponse:
        cache = self._cache
        while (leader := cache.inflight.get(primary)) is not None:
            # Someone is already asking the upstream for this: wait for its answer.
            try:
                async with asyncio.timeout(ctx.deadline.remaining()):
                    outcome = await asyncio.shield(leader)
            except TimeoutError:
                return await self._fetch(ctx, call_next, primary, request_cc)
            if outcome == "answered":
                entry = cache.store.lookup(primary, ctx.request.headers)
                if entry is not None:
                    self._count("coalesced")
                    return _serve(entry, cache.clock.wall(), "hit; collapsed", ctx)
                return await self._fetch(ctx, call_next, primary, request_cc)
            # The leader went away (its client left) or failed: the first waiter to get
            # here leads the next attempt, the others wait for it. No stampede.
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        cache.inflight[primary] = future
        outcome = "failed"
        try:
            response = await self._fetch(ctx, call_next, primary, request_cc)
            outcome = "answered"
            return response
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if cache.inflight.get(primary) is future:
                del cache.inflight[primary]
            future.set_result(outcome)

    async def _fetch(
        self,
        ctx: RequestContext,
        call_next: Handler,
        primary: str,
        request_cc: dict[str, str | None],
    ) -> web.StreamResponse:
        cache = self._cache
        generation = cache.generation(ctx.path)
        response = await call_next(ctx)
        # A write that invalidated this path while we waited makes our answer stale.
        entry = (
            self._store(ctx, response, primary, request_cc)
            if cache.generation(ctx.path) == generation
            else None
        )
        self._count("miss_stored" if entry is not None else "miss")
        response.headers["Cache-Status"] = "gateway; fwd=miss" + ("; stored" if entry else "")
        return response

    async def _revalidate(
        self,
        ctx: RequestContext,
        call_next: Handler,
        entry: Entry,
        primary: str,
        request_cc: dict[str, str | None],
    ) -> web.StreamResponse:
        cache = self._cache
        if entry.upstream_etag is not None:
            ctx.upstream_headers.append(("If-None-Match", entry.upstream_etag))
        now = cache.clock.wall()
        staleness = entry.age(now) - entry.lifetime
        try:
            response = await call_next(ctx)
        except GatewayError:
            if 0 <= staleness < stale_window(entry.directives, "stale-if-error"):
                self._count("stale_if_error")
                return _serve(entry, now, "fwd=stale; stale-if-error", ctx)
            raise
        if response.status == 304 and not response.prepared:
            old_size = entry.size
            _freshen(entry, response, cache.clock.wall())
            cache.store.resized(entry, old_size)
            self._count("revalidated")
            return _serve(entry, cache.clock.wall(), "fwd=stale; fwd-status=304", ctx)
        if response.status >= 500 and 0 <= staleness < stale_window(
            entry.directives, "stale-if-error"
        ):
            self._count("stale_if_error")
            return _serve(entry, now, "fwd=stale; stale-if-error", ctx)
        stored = self._store(ctx, response, primary, request_cc)
        self._count("refetched")
        response.headers["Cache-Status"] = "gateway; fwd=stale" + ("; stored" if stored else "")
        return response

    def _refresh_later(self, ctx: RequestContext, call_next: Handler, entry: Entry) -> None:
        """One background revalidation per entry; its result replaces the entry."""
        cache = self._cache
        key = entry.primary
        if key in cache.refreshing:
            return
        cache.refreshing.add(key)
        request_cc: dict[str, str | None] = {}

        async def refresh() -> None:
            try:
                await self._revalidate(ctx, call_next, entry, key, request_cc)
            except Exception:  # a failed refresh leaves the stale entry in place
                log.debug("background revalidation of %s failed", key, exc_info=True)
            finally:
                cache.refreshing.discard(key)

        task = asyncio.get_running_loop().create_task(refresh())
        _background.add(task)
        task.add_done_callback(_background.discard)

    def _store(
        self,
        ctx: RequestContext,
        response: web.StreamResponse,
        primary: str,
        request_cc: dict[str, str | None],
    ) -> Entry | None:
        spec = self._spec
        if spec is None or response.prepared or not isinstance(response, web.Response):
            return None
        body = response.body
        headers = response.headers
        if not isinstance(body, bytes) or "Gateway-Partial" in headers:
            return None
        response_cc = directives(headers.get("Cache-Control"))
        public_scope = spec.scope == "public"
        if public_scope and not ("public" in response_cc or "s-maxage" in response_cc):
            return None  # a route may share a response only when the upstream allows it
        # Anonymous callers share one scope too: a credential on such a request makes
        # the answer someone's own unless the upstream says otherwise.
        shared = public_scope or ctx.consumer is None
        with_credentials = "Authorization" in ctx.request.headers or ctx.consumer is not None
        if not storable(
            response.status,
            request_cc,
            response_cc,
            headers,
            shared and with_credentials,
            spec.ttl > 0,
        ):
            return None
        vary = vary_names(headers)
        if vary is None:
            return None
        # Every stored response gets a strong validator: hits then answer If-None-Match
        # with a 304 straight from the entry instead of hashing the body each time.
        stored_headers = tuple((n, v) for n, v in headers.items() if n.lower() not in _NOT_STORED)
        upstream_etag = etag = headers.get("ETag")
        if etag is None:
            etag = strong_etag(body)
            stored_headers += (("ETag", etag),)
        request_headers = ctx.request.headers
        received_at = self._cache.clock.wall()
        entry = Entry(
            primary=primary,
            path=ctx.path,
            vary=vary,
            vary_values=tuple(request_headers.get(name) for name in vary),
            status=response.status,
            headers=stored_headers,
            body=body,
            etag=etag,
            upstream_etag=upstream_etag,
            directives=response_cc,
            stored_at=received_at,
            initial_age=initial_age(headers),
            lifetime=freshness_lifetime(response_cc, headers, spec.ttl, received_at),
        )
        return entry if self._cache.store.put(entry) else None


_background: set[asyncio.Task[None]] = set()


def _serve(entry: Entry, now: float, status: str, ctx: RequestContext) -> web.Response:
    response = web.Response(
        status=entry.status,
        headers=CIMultiDict(entry.headers),
        body=entry.body if ctx.request.method != "HEAD" else None,
    )
    if ctx.request.method == "HEAD":
        response.headers["Content-Length"] = str(len(entry.body))
    response.headers["Age"] = str(int(entry.age(now)))
    response.headers["Cache-Status"] = f"gateway; {status}"
    return response


def _not_modified(entry: Entry, now: float, status: str) -> web.Response:
    validators = entry.validators
    if validators is None:
        validators = entry.validators = tuple(
            (name, value) for name, value in entry.headers if name.lower() in _NOT_MODIFIED
        )
    response = web.Response(status=304)
    headers = response.headers
    for name, value in validators:
        headers.add(name, value)
    headers["Age"] = str(int(entry.age(now)))
    headers["Cache-Status"] = f"gateway; {status}"
    return response


def _freshen(entry: Entry, not_modified: web.StreamResponse, now: float) -> None:
    """RFC 9111 section 4.3.4: a 304 updates the stored headers and restarts the age."""
    # Case-insensitive, and repeated headers (Link) survive.
    updated: CIMultiDict[str] = CIMultiDict(entry.headers)
    for name in ("Cache-Control", "Date", "Expires", "ETag", "Last-Modified", "Vary"):
        value = not_modified.headers.get(name)
        if value is not None:
            updated[name] = value
    entry.headers = tuple(updated.items())
    entry.validators = None
    entry.directives = directives(updated.get("Cache-Control"))
    entry.etag = entry.upstream_etag = updated.get("ETag")
    entry.stored_at = now
    entry.initial_age = initial_age(not_modified.headers)
    entry.lifetime = freshness_lifetime(entry.directives, not_modified.headers, entry.lifetime, now)
