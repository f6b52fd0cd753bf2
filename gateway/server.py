"""The listener: one aiohttp low-level server, the request entry point, and lifecycle.

The low-level ``web.Server`` is used instead of ``web.Application``: the gateway has
its own router, so aiohttp's would only add a second lookup per request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import LineTooLong

from .admin.app import admin_app, admin_token
from .admin.redact import scrub
from .config.errors import ConfigError
from .config.loader import LoadedConfig, load_config
from .config.model import GatewayConfig
from .context import Clock, Deadline, RequestContext, SystemClock
from .errors import GatewayError, HeadersTooLarge, problem_body, problem_response
from .metrics.endpoint import metrics_handler
from .metrics.recorder import RouteRecorders
from .observability import SERVER_NAME, AccessLog, RequestIds, stamp_response
from .paths import normalise_path
from .policies.auth.services import AuthServices, needs_auth
from .policies.cache.bus import InvalidationBus
from .policies.cache.policy import ResponseCache
from .policies.cache.store import ResponseStore
from .policies.idempotency.store import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from .policies.ratelimit.policy import Limiter
from .runtime import Runtime, Services, build_runtime
from .tracing import incoming_trace
from .upstream.headers import BUDGET_HEADER
from .upstream.pool import PoolRegistry

log = logging.getLogger("gateway")


class _ProblemRequestHandler(web_protocol.RequestHandler):
    """aiohttp answers requests it cannot parse itself; make those answers problem+json
    like every other error (431 for oversized header lines, 400 otherwise)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if status == 500 and exc is not None:
            log.error("unhandled error", exc_info=exc)
        if isinstance(exc, LineTooLong):
            status, title, slug = 431, HeadersTooLarge.title, HeadersTooLarge.slug
            detail = "a request header line is larger than this gateway accepts"
        elif status == 400:
            title, slug, detail = "Bad request", "bad-request", "the request could not be parsed"
        else:
            title, slug, detail = "Internal gateway error", "internal", "unexpected error"
        response = web.Response(
            status=status,
            body=problem_body(status, title, slug, detail, None),
            content_type="application/problem+json",
        )
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class _ProblemAppRunner(web.AppRunner):
    """The admin listener's runner: its unparseable requests get problem+json too."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application's own server, with the connection handler class swapped:
        # _Server adds no state, only which RequestHandler a connection gets.
        server.__class__ = _Server
        return server


class Gateway:
    """One gateway process: a listener, the current Runtime, and reloads."""

    def __init__(self, loaded: LoadedConfig, *, clock: Clock | None = None) -> None:
        self._loaded = loaded
        self.config_path = loaded.files[0]
        self.clock: Clock = clock or SystemClock()
        self._registry = PoolRegistry(self.clock)
        self._ids = RequestIds()
        self._access_log = AccessLog.open(loaded.config.server.access_log)
        #: Every route's metrics recorder by name, kept across reloads.
        self.recorders = RouteRecorders()
        self._runner: web.ServerRunner | None = None
        self.auth: AuthServices | None = None
        self.limiter: Limiter | None = None
        self.cache: ResponseCache | None = None
        self._cache_bus: InvalidationBus | None = None
        self._admin_runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self.runtime: Runtime
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_error: str | None = None
        #: Wall-clock time of the last reload, accepted or refused.
        self.last_reload_at: float | None = None
        #: Set when ``stop`` begins: the listener is closed and in-flight requests are
        #: finishing, so ``/readyz`` says not ready while the admin listener still runs.
        self.draining = False
        self._stopping: asyncio.Future[None] | None = None
        self._drain_delay = 0.0

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        admin = self._loaded.config.admin
        # First, before anything listens: a missing or empty token stops the start.
        admin_key = admin_token(admin, self._loaded.base_dir) if admin.enabled else None
        await self._start_auth_if_needed(self._loaded)
        self.limiter = Limiter(self._loaded.config.rate_limits, self.clock)
        await self.limiter.warm_up()
        cache_spec = self._loaded.config.cache
        self.cache = ResponseCache(
            ResponseStore(cache_spec.max_bytes, cache_spec.max_entry_size), self.clock
        )
        if cache_spec.redis_url is not None:
            self._cache_bus = InvalidationBus(self.cache, cache_spec.redis_url, cache_spec.channel)
            await self._cache_bus.start()
        idempotency = self._loaded.config.idempotency
        self.idempotency: IdempotencyStore = (
            RedisIdempotencyStore(idempotency.redis_url, idempotency.redis_timeout)
            if idempotency.store == "redis"
            else MemoryIdempotencyStore(self.clock)
        )
        self.runtime = await build_runtime(self._loaded, self._services())
        server_spec = self._loaded.config.server
        # Like every `server:` setting, fixed at start (a reload warns that it waits).
        self._drain_delay = server_spec.drain_delay
        limits = server_spec.limits
        server = _Server(
            self._handle,
            handler_cancellation=True,
            access_log=None,
            auto_decompress=False,
            max_line_size=limits.max_request_line,
            max_field_size=limits.max_header_size,
            max_headers=limits.max_headers,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=server_spec.shutdown_timeout)
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, server_spec.listen.host, server_spec.listen.port, backlog=1024
        )
        await self._site.start()
        admin = self._loaded.config.admin
        if admin.enabled:
            assert admin_key is not None
            app = admin_app(self, admin_key, metrics=metrics_handler(self))
            self._admin_runner = _ProblemAppRunner(app, access_log=None)
            await self._admin_runner.setup()
            await web.TCPSite(self._admin_runner, admin.listen.host, admin.listen.port).start()

    @property
    def port(self) -> int:
        assert self._runner is not None
        address: Any = self._runner.addresses[0]
        return int(address[1])

    @property
    def admin_port(self) -> int | None:
        if self._admin_runner is None:
            return None
        address: Any = self._admin_runner.addresses[0]
        return int(address[1])

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close pools.

        The admin listener stays up until the requests have finished, answering
        ``/readyz`` with 503 meanwhile. There is one shutdown: a second call waits for
        it, and a caller cancelled while waiting does not cut it short."""
        if self._stopping is None:
            self.draining = True
            self._stopping = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._stopping)

    async def _shut_down(self) -> None:
        delay = self._drain_delay
        if delay > 0 and self._runner is not None:
            # Not ready, still serving: load balancers polling /readyz move away first.
            await asyncio.sleep(delay)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # A reload under way finishes first (later ones are refused while draining), so
        # nothing it builds is left behind the cleanup below.
        async with self._reload_lock:
            pass
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
            self._admin_runner = None
        for task in list(self._retiring):
            task.cancel()
        await self._registry.close()
        if self.auth is not None:
            await self.auth.close()
        if self.limiter is not None:
            await self.limiter.close()
        if self._cache_bus is not None:
            await self._cache_bus.close()
        await self.idempotency.close()
        self._access_log.close()

    # -- reload ------------------------------------------------------------------

    async def reload(self) -> bool:
        """Load the config files again; keep the running config if they are broken.

        Refused (False) once the gateway is shutting down."""
        if self.draining:
            return self._shutting_down()
        async with self._reload_lock:
            if self._stopping is not None:  # shutting down since this reload queued
                return self._shutting_down()
            try:
                loaded = await asyncio.to_thread(load_config, self.config_path)
                await self._start_auth_if_needed(loaded)
                if self.auth is not None:
                    await asyncio.to_thread(
                        self.auth.reload_peppers, loaded.config, loaded.base_dir
                    )
                runtime = await build_runtime(loaded, self._services())
            except ConfigError as exc:
                return self._refuse_reload(str(exc))
            except Exception as exc:
                # A config that validates but cannot be built is a bug of ours; it must
                # still never take down the config that is serving.
                log.exception("config reload failed while building routes")
                return self._refuse_reload(f"{type(exc).__name__}: {exc}")
            old, self.runtime = self.runtime, runtime
            self._loaded = loaded
            self.reloads_ok += 1
            self.last_reload_error = None
            self.last_reload_at = self.clock.wall()
            if loaded.config.server != old.config.server:
                log.warning("changes under `server:` take effect at the next restart")
            if _store_settings(loaded.config) != _store_settings(old.config):
                log.warning("changes to the credential store take effect at the next restart")
            old_limits, new_limits = old.config.rate_limits, loaded.config.rate_limits
            if (old_limits.store, old_limits.redis_url, old_limits.redis_timeout) != (
                new_limits.store,
                new_limits.redis_url,
                new_limits.redis_timeout,
            ):
                log.warning("changes to the rate-limit store take effect at the next restart")
            log.info("config reloaded: %d routes", len(runtime.routes))
            task = asyncio.get_running_loop().create_task(self._retire(old))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            return True

    @staticmethod
    def _shutting_down() -> bool:
        log.warning("config reload ignored: the gateway is shutting down")
        return False

    def _refuse_reload(self, error: str) -> bool:
        self.reloads_failed += 1
        self.last_reload_error = error
        self.last_reload_at = self.clock.wall()
        # The error may quote a value from the file: a URL with a password in it.
        log.error("config reload refused; still serving the previous config:\n%s", scrub(error))
        return False

    def _services(self) -> Services:
        return Services(
            registry=self._registry,
            clock=self.clock,
            auth=self.auth,
            limiter=self.limiter,
            cache=self.cache,
            idempotency=self.idempotency,
            recorders=self.recorders,
        )

    async def _start_auth_if_needed(self, loaded: LoadedConfig) -> None:
        if self.auth is None and needs_auth(loaded.config):
            self.auth = await AuthServices.start(loaded.config, loaded.base_dir, self.clock)

    @property
    def cache_bus(self) -> InvalidationBus | None:
        return self._cache_bus

    @property
    def watched_files(self) -> tuple[str, ...]:
        return self.runtime.files

    async def _retire(self, old: Runtime) -> None:
        deadline = Deadline.after(self._loaded.config.server.shutdown_timeout, self.clock)
        # Polled rather than signalled: the request path then pays nothing for it.
        while old.in_flight and not deadline.expired:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await self._registry.release(old.pool_keys)

    # -- the request path ----------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        runtime = self.runtime
        runtime.in_flight += 1
        clock = self.clock
        started = clock.monotonic()
        headers = request.headers
        request_id = self._ids.take(headers.get("X-Request-Id"))
        trace = incoming_trace(headers) if runtime.tracing else None
        path, _, query = request.raw_path.partition("?")
        route_name: str | None = None
        ctx: RequestContext | None = None
        recorder = runtime.unrouted
        try:
            path = normalise_path(path)
            route, params = runtime.router.match(request.method, path)
            route_name = route.name
            recorder = route.metrics
            budget = route.budget
            asked = headers.get(BUDGET_HEADER)
            if asked is not None:
                budget = _shortened(budget, asked)
            ctx = RequestContext(
                request=request,
                route=route,
                params=params,
                path=path,
                query=query,
                request_id=request_id,
                deadline=Deadline(started + budget, clock),
                started=started,
                trace=trace,
            )
            response = await route.handler(ctx)
        except GatewayError as error:
            response = problem_response(error, request_id)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, path)
            response = web.Response(
                status=500,
                body=problem_body(
                    500, "Internal gateway error", "internal", "unexpected error", request_id
                ),
                content_type="application/problem+json",
            )
        finally:
            runtime.in_flight -= 1
        if not response.prepared:
            if ctx is None:
                response.headers["X-Request-Id"] = request_id
                response.headers["Server"] = SERVER_NAME
            else:
                stamp_response(ctx, response)
        access_log = self._access_log
        if recorder is None and not access_log.enabled:
            return response
        elapsed = clock.monotonic() - started
        status = response.status
        if ctx is not None:
            # The route that answered: a versioned API's dispatcher hands the request
            # to its version's route, which records and logs it.
            route = ctx.route
            recorder = route.metrics
            route_name = route.name
        if recorder is not None:
            recorder.record(status, elapsed, ctx)
        if access_log.enabled:
            access_log.add(
                clock.wall(),
                request_id,
                request.method,
                path,
                route_name,
                status,
                elapsed,
                ctx.timings if ctx is not None else None,
                trace.trace_id if trace is not None else None,
            )
        return response


def _store_settings(config: GatewayConfig) -> tuple[object, ...]:
    auth = config.auth
    return (auth.store, auth.sqlite_path, auth.redis_url, auth.pepper_file)


def _shortened(budget: float, asked: str) -> float:
    """A client may shorten its budget with ``Gateway-Budget-Ms``, never lengthen it."""
    if asked.isdigit() and len(asked) <= 9:
        return min(budget, int(asked) / 1000)
    return budget
