"""The benchmark: the gateway against a direct call, a 30-line proxy and nginx.

    python -m bench.run [--duration 10] [--rounds 3] [--only a,b,c,d,d2,e,f,g,...,p,q,r]

Variants (see bench/README.md for the reasoning):

    a   the sample ``users`` service, called directly (no proxy: the floor)
    b   bench/baseline_proxy.py in front of it
    c   nginx in front of it (skipped when nginx is not on PATH)
    d   the gateway's proxy route in front of it, access log off
    d2  the same with the access log on, written to a file
    g   d's route with API-key auth (``auth: [api_key]``), every request with X-API-Key
    h   d's route with JWT validation (``auth: [jwt]``), every request with one ES256
        token from the gateway's own token endpoint (a client reuses its token)
    i   d's route with a rate limit in memory (``rate_limit: {by: ip, plan: false,
        limit: {rate: 1000000/s, burst: 1000000}}``): decided on every request, never
        refusing
    j   the same limit with ``rate_limits: {store: redis}``, on a private redis-server
        started here on a free port (pinned like the upstreams), ``redis_timeout: 50ms``;
        then an open loop at 500 requests/s against j and d, back to back, for the time
        of j's Redis decisions (Server-Timing ``ratelimit;dur=``)
    k   a POST proxy route to the sample ``orders`` service (``POST /orders``, a JSON
        body of about 100 bytes), every request with a new ``Idempotency-Key``, which
        this route ignores
    l   the same route with ``idempotency: {}`` (the memory store): every request a
        new key, so a new record and one upstream call each
    m   a POST proxy route to ``POST /orders`` taking a 2 KB JSON order, no validation
    n   the same route with ``validation: {body: <a JSON Schema>}`` (nested objects,
        arrays, patterns, integer bounds) that the 2 KB order satisfies
    o   d's route with ``cache: {ttl: 60s}`` and ``conditional: {}``, wrk GETting one URL:
        every request after the first a cache hit; then, after the rounds, an open loop
        at 500 requests/s for the duration on one URL of a second route of o's gateway,
        ``cache: {ttl: 2s}`` in front of bench/counting_upstream.py, which counts
    p   o's route, every request with ``If-None-Match: <the entry's ETag>``: every
        answer a 304 with no body
    q   d's route with ``metrics: {enabled: false}`` and ``tracing: {enabled: false}``
        (the access log off, as d's): the gateway with its observability off
    r   d's route with metrics and tracing on (the defaults) and the access log on,
        written to a file; requests carry no ``traceparent``, so each starts a trace;
        r/q is reported like the ratios below
    e   the gateway's five-way fan-out, open loop at 200 requests/s
    f   the same with one optional backend slow (500 ms), open loop at 100 requests/s

a to d2 and g to r are closed-loop throughput runs with wrk (``-t1 -c32``; k to n with a
Lua script that POSTs their body). Their servers are measured in interleaved rounds (b,
o, i, d, j, p, g, h, k, l, n, m, c, d2, q, r, a, every second round backwards), each wrk
run lasting duration/rounds seconds (rounded up, at least 3) after a 1 s warm-up run per
server and round. Each round has server processes of its own, started again before it:
two processes of one config run a few per cent apart for as long as they live, a gap a
pair's ratio would otherwise carry through every round. A shared machine's throughput
drifts by 10-15 % within minutes, so comparing two variants measured minutes apart
compares the machine too: each ratio (d/b, d/c, d2/b, g/d, h/d, i/d, j/d, l/k, n/m, o/d,
p/d) and n's added latency and CPU (n - m) are computed within each round and the median
over the rounds is reported, as is each variant's median rps, latency and CPU per
request. k to n proxy to a second sample service, ``orders``, on the load core next to
the ``users`` one. g's key and h's OAuth client are created with the gateway's CLI in a
temporary credential store; before measuring, g and h must answer 200 with their
credential and 401 without it or with a tampered one; i and j must answer 200 with
``RateLimit-Policy`` and ``RateLimit`` (j also with ``ratelimit;dur=`` in
``Server-Timing``). A run with any non-2xx answer (401s and 502s are fast) puts its
variant in error, and so does a run of j with fewer Redis decisions (EVALSHAs counted by
the redis-server) than responses: a request admitted without one (``fail_open``) is fast
too. (wrk counts answers over 399 only, so p's 304s are accepted; o's and p's second
probe GET must be ``Cache-Status: gateway; hit`` with an ETag, and p's probe, before
measuring and after each run, a 304 with no body.) k to n must answer 201; l must replay
a repeated key (``Idempotent-Replayed: true``, no upstream call) and k must not; n must
refuse with 422 a body that breaks its schema, which m passes on; and each run of k to n
must have created at least one order upstream per response (the orders service numbers
them): fewer would mean replays, fast answers that skip the upstream.

e and f are open-loop latency runs with ``gateway.loadgen``. The server under test gets
a CPU core of its own; the load generator and the sample upstream services share the
other one. Results are printed and written to bench/results/latest.json.

Bars (the exit status is 1 when one fails): proxy_throughput, the median per-round d/b
req/s ratio >= 0.9; api_key_auth, g/d >= 0.85; jwt_auth, h/d >= 0.8; rate_limit_memory,
i/d >= 0.95; rate_limit_redis, j/d >= 0.8; cache_hit, o/d >= 2.0; not_modified,
p/d >= 2.0; observability, r/q >= 0.9; cache_ttl_upstream_load, the counting
upstream's requests during o's TTL
open loop <= ceil(duration / 2 s) + 1; rate_limit_added_p50, the p50 of j's
``ratelimit;dur=`` over its open loop <= 0.5 ms; idempotency_memory, l/k >= 0.85;
validation_added_p50, n p50 - m p50 <= 0.2 ms under an open loop of POSTs at 300 req/s,
the median over 5 rounds alternating m and n; the fan-out's p99 <= 15 ms; the slow fan-out's
p99 <= 60 ms with every response partial. Not a bar: the validator's own time for the
2 KB order, timed in this process (``validation.microbenchmark``).

Every process started here is stopped in a ``finally`` (SIGTERM, then SIGKILL), on
errors, Ctrl-C and SIGTERM alike.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from bench import pycost
from bench.bars import (
    bar_outcome,
    cache_ttl_bars,
    cache_ttl_limit,
    closed_loop_bars,
    rate_limit_open_loop_bars,
    validation_bars,
)
from bench.configs import (
    fanout_gateway_config,
    nginx_command,
    orders_gateway_config,
    proxy_gateway_config,
    services_command,
)
from bench.credentials import (
    create_api_key,
    create_client,
    fetch_token,
    plan_token_ttl_s,
    tampered_credentials,
)
from bench.errors import BenchError
from bench.open_loop import measure_open_loop
from bench.orders import (
    ORDER_SCHEMA,
    SMALL_ORDER,
    check_order_schema,
    invalid_order,
    large_order,
    orders_made,
    post_script,
    validator_microbenchmark,
)
from bench.probes import expect_ok, expect_status, fetch, post, upstream_count
from bench.processes import (
    Cores,
    PortPicker,
    Proc,
    Processes,
    affinity_of,
    child_pids,
    exited,
    taskset_report,
    wait_ready,
)
from bench.redis_store import RedisStore, check_rate_limited, redis_command, wait_redis
from bench.report import machine_info, noise, print_table
from bench.rounds import (
    DEFAULT_ROUNDS,
    MIN_ROUND_S,
    ROUND_ORDER,
    is_number,
    median_of,
    ratios,
    round_orders,
    round_seconds,
    summarise_rounds,
    validation_cost,
)
from bench.targets import Target, Upstream
from bench.variants import (
    ALL_VARIANTS,
    BAR_FANOUT_P99_MS,
    BAR_SLOW_P99_MS,
    BENCH_CACHE,
    BENCH_CONDITIONAL,
    BENCH_IDEMPOTENCY,
    BENCH_ROUTE_LIMIT,
    CACHE_TTL_OPEN_RATE,
    CACHE_TTL_S,
    CACHE_TTL_URL_PATH,
    CACHED,
    CLOSED_LOOP,
    FANOUT_RATE,
    GATEWAY_PROXIES,
    HOST,
    KINDS,
    NAMES,
    OBSERVABILITY,
    ORDERS_PATH,
    ORDERS_VARIANTS,
    PYTHON,
    RATE_LIMIT_OPEN_RATE,
    RATE_LIMITED,
    REDIS_TIMEOUT,
    RESULTS,
    ROUND_WARMUP_S,
    SLOW_RATE,
    USER_PATH,
    VALIDATION_OPEN_MIN_S,
    VALIDATION_OPEN_RATE,
    VALIDATION_OPEN_ROUNDS,
    VALIDATION_OPEN_WARMUP_S,
    WARMUP_S,
    WRK_CONNECTIONS,
    WRK_THREADS,
)
from bench.wrk import measure_wrk, parse_wrk, wrk
from gateway.loadgen import parse_server_timing, percentile

_T = TypeVar("_T")


@dataclass
class Run:
    duration: float
    rounds: int
    only: tuple[str, ...]
    cores: Cores
    procs: Processes
    workdir: Path
    port: PortPicker = field(default_factory=PortPicker)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    pinning: dict[str, Any] = field(default_factory=dict)
    orders: list[list[str]] = field(default_factory=list)
    #: The open loops against j (and d) that time the Redis decisions; None if not run.
    rate_limit_open: dict[str, Any] | None = None
    #: m and n under an open loop of POSTs: the added p50 at a moderate load.
    validation_open: dict[str, Any] | None = None
    #: The sample services behind the closed-loop variants, by kind (users, orders).
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    #: m's and n's 2 KB order, and n's validator timed in-process (when n is selected).
    order: dict[str, Any] = field(default_factory=large_order)
    validation_micro: dict[str, Any] | None = None
    #: The TTL check on o's gateway: upstream requests under an open loop; None if not run.
    cache_ttl: dict[str, Any] | None = None

    @property
    def order_body(self) -> bytes:
        return json.dumps(self.order, separators=(",", ":")).encode()

    @property
    def round_s(self) -> int:
        return round_seconds(self.duration, self.rounds)

    @property
    def token_ttl_s(self) -> int:
        """h's token lifetime (it must outlast the closed-loop runs)."""
        measured = sum(key in self.only for key in CLOSED_LOOP)
        return plan_token_ttl_s(measured, self.rounds, self.round_s)

    def server(self, name: str, command: Sequence[str]) -> contextlib.AbstractContextManager[Proc]:
        return self.procs.running_one(name, self.cores.wrap(command, self.cores.server))

    def start_server(self, name: str, command: Sequence[str]) -> Proc:
        """Like ``server`` for one that outlives a block: stopped by its owner or at exit."""
        return self.procs.start(name, self.cores.wrap(command, self.cores.server))

    def launch(self, target: Target, name: str, command: Sequence[str]) -> None:
        """Start ``target``'s server, remembering how: each round starts it afresh."""
        target.command = list(command)
        target.proc = self.start_server(name, command)

    def record_pinning(self, proc: Proc, role: str) -> None:
        pids = [proc.pid, *child_pids(proc.pid)]
        self.pinning[proc.name] = {
            "role": role,
            "pids": {str(pid): affinity_of(pid) for pid in pids},
            "taskset": taskset_report(proc.pid),
        }

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def variant(self, key: str, measure: Callable[[], dict[str, Any]]) -> None:
        if key not in self.only:
            return
        self.say(f"[{key}] {NAMES[key]} ...")
        started = time.monotonic()
        try:
            result = measure()
        except BenchError as exc:
            self.say(f"[{key}] FAILED: {exc}")
            result = {"error": str(exc)}
        result = {"name": NAMES[key], **result}
        self.variants[key] = result
        self.say(f"[{key}] done in {time.monotonic() - started:.1f}s")

    def setup_failed(self, keys: Sequence[str], error: BenchError) -> None:
        """What the variants that depended on a failed shared set-up record."""
        self.say(f"set-up FAILED: {error}")
        for key in keys:
            if key in self.only and key not in self.variants:
                self.variants[key] = {"name": NAMES[key], "error": f"set-up failed: {error}"}

    # -- a to d2, g, h: one users service, every server under test in front of it, in rounds

    def run_proxies(self) -> None:
        if not set(CLOSED_LOOP) & set(self.only):
            return
        try:
            self._run_proxies()
        except BenchError as exc:
            self.setup_failed(CLOSED_LOOP, exc)

    def _run_proxies(self) -> None:
        if "n" in self.only:
            self._time_validator()
        kinds = []
        if set(self.only) & (set(CLOSED_LOOP) - set(ORDERS_VARIANTS)):
            kinds.append("users")
        if set(self.only) & set(ORDERS_VARIANTS):
            kinds.append("orders")
        targets: list[Target] = []
        try:
            for kind in kinds:
                port = self.port()
                command = services_command({kind: port}, "0ms", "0ms")
                proc = self.procs.start(kind, self.cores.wrap(command, self.cores.load))
                self.upstreams[kind] = Upstream(kind, proc, port)
            if "o" in self.only:
                # The TTL check's upstream, which counts what reaches it.
                port = self.port()
                command = [PYTHON, "-m", "bench.counting_upstream", "--port", str(port)]
                proc = self.procs.start("counting", self.cores.wrap(command, self.cores.load))
                self.upstreams["counting"] = Upstream("counting", proc, port)
            for upstream in self.upstreams.values():
                wait_ready(upstream.proc, upstream.port)
                self.record_pinning(upstream.proc, "upstream (load core)")
            if "users" in self.upstreams:
                expect_ok(self.upstreams["users"].origin + USER_PATH, "users service")
            if "orders" in self.upstreams:
                orders_made(self.upstreams["orders"].origin)  # it answers POST /orders 201
            targets = self._start_targets()
            self._measure_rounds(targets)
            if "counting" in self.upstreams:
                self._measure_cache_ttl(targets, self.upstreams["counting"])
            if "users" in self.upstreams:
                self._measure_rate_limit_open_loop(targets, self.upstreams["users"].proc)
            if "orders" in self.upstreams:
                self._measure_validation_open_loop(targets, self.upstreams["orders"].proc)
        finally:
            for target in targets:
                if target.proc is not None:
                    self.procs.stop(target.proc)
                if target.redis is not None:
                    self.procs.stop(target.redis.proc)
            for upstream in self.upstreams.values():
                self.procs.stop(upstream.proc)
        for target in targets:
            self._record(target)

    def _time_validator(self) -> None:
        """n's validator on its own, in this process, before any server starts."""
        self.say("[n] the validator alone, in-process: 2 KB order ...")
        try:
            check_order_schema(self.order)
            self.validation_micro = validator_microbenchmark(self.order, self.order_body)
        except BenchError as exc:
            self.say(f"[n] validator microbenchmark FAILED: {exc}")
            self.validation_micro = {"error": str(exc)}

    def _start_targets(self) -> list[Target]:
        """Every selected server, started at once and then checked one by one.

        They all stay up through a round: an idle asyncio server or nginx costs no CPU
        (the gateway's health checks are passive). Their CPU is still watched
        (``idle_servers``) to show they stayed idle. ``_start_afresh`` starts them
        again before each later round, and each round warms them up first.
        """
        targets: list[Target] = []
        users = self.upstreams.get("users")
        upstream, upstream_port = (users.origin, users.port) if users else ("", 0)
        for key in ROUND_ORDER:
            if key not in self.only:
                continue
            if key == "c" and shutil.which("nginx") is None:
                self.variants["c"] = {"name": NAMES["c"], "skipped": "nginx is not on PATH"}
                continue
            if key in ORDERS_VARIANTS:
                port = self.port()
                target = Target(key, f"http://{HOST}:{port}{ORDERS_PATH}", port, upstream="orders")
                targets.append(target)
                try:
                    self._start_orders_gateway(target)
                except BenchError as exc:
                    self.say(f"[{key}] FAILED: {exc}")
                    target.error = str(exc)
                continue
            if key == "a":
                targets.append(Target(key, upstream + USER_PATH, upstream_port))
                continue
            port = self.port()
            url = f"http://{HOST}:{port}{USER_PATH}"
            if key in ("g", "h"):
                try:
                    targets.append(self._start_auth_gateway(key, url, port, upstream))
                except BenchError as exc:
                    self.say(f"[{key}] FAILED: {exc}")
                    targets.append(Target(key, url, port, error=str(exc)))
                continue
            if key in RATE_LIMITED:
                # Appended before starting anything: whatever did start (j's redis-server)
                # is then stopped with the others, even if the rest fails.
                target = Target(key, url, port)
                targets.append(target)
                try:
                    self._start_limited_gateway(target, upstream)
                except BenchError as exc:
                    self.say(f"[{key}] FAILED: {exc}")
                    target.error = str(exc)
                continue
            access_log: Path | None = None
            if key == "b":
                command = [
                    PYTHON,
                    "-m",
                    "bench.baseline_proxy",
                    "--port",
                    str(port),
                    "--upstream",
                    upstream,
                ]
                proc = self.start_server("baseline", command)
            elif key == "c":
                command = nginx_command(self.workdir / "nginx", port, upstream_port)
                proc = self.start_server("nginx", command)
            else:
                name = {
                    "d": "gateway",
                    "d2": "gateway-log",
                    "o": "gateway-cache",
                    "p": "gateway-cache-304",
                    "q": "gateway-observability-off",
                    "r": "gateway-observability-on",
                }[key]
                if key in ("d2", "r"):
                    access_log = self.workdir / name / "access.log"
                counting = self.upstreams.get("counting")
                config = proxy_gateway_config(
                    self.workdir / name,
                    port,
                    upstream,
                    str(access_log or "off"),
                    cache=BENCH_CACHE if key in CACHED else None,
                    ttl_upstream=counting.origin if key == "o" and counting else None,
                    observability=OBSERVABILITY.get(key),
                )
                command = [PYTHON, "-m", "gateway", "run", "-c", str(config)]
                proc = self.start_server(name, command)
            status = 304 if key == "p" else 200
            targets.append(
                Target(key, url, port, proc, access_log, status=status, command=list(command))
            )
        for target in targets:
            if target.error is not None:
                continue
            try:
                self._check(target)
            except BenchError as exc:
                self.say(f"[{target.key}] FAILED: {exc}")
                target.error = str(exc)
        return targets

    def _start_auth_gateway(self, key: str, url: str, port: int, upstream: str) -> Target:
        """g or h: d's gateway with ``auth: [api_key]`` or ``auth: [jwt]``.

        The credential is created with the gateway's CLI in the config's (temporary)
        store before the gateway starts: g's key goes straight into the target's
        headers; h's OAuth client gets its token once the gateway answers (``_check``).
        """
        name = "gateway-apikey" if key == "g" else "gateway-jwt"
        method = "api_key" if key == "g" else "jwt"
        config = proxy_gateway_config(
            self.workdir / name, port, upstream, "off", auth=method, token_ttl_s=self.token_ttl_s
        )
        target = Target(key, url, port)
        if key == "g":
            target.headers = {"X-API-Key": create_api_key(config)}
        else:
            target.client = create_client(config)
        command = [PYTHON, "-m", "gateway", "run", "-c", str(config)]
        self.launch(target, name, command)
        return target

    def _start_limited_gateway(self, target: Target, upstream: str) -> None:
        """i or j: d's gateway with ``rate_limit:`` on its route, its store in memory (i)
        or in a private redis-server (j) started here first, on the load core."""
        store = RATE_LIMITED[target.key]
        spec: dict[str, Any] = {"store": store}
        if store == "redis":
            port = self.port()
            command = redis_command(self.workdir / "redis", port)
            proc = self.procs.start("redis", self.cores.wrap(command, self.cores.load))
            target.redis = RedisStore(proc, port)
            wait_redis(proc, port)
            self.record_pinning(proc, "redis-server, j's limiter store (load core)")
            spec["redis_url"] = target.redis.url
            spec["redis_timeout"] = REDIS_TIMEOUT
        target.rate_limits = spec
        name = f"gateway-ratelimit-{store}"
        config = proxy_gateway_config(
            self.workdir / name, target.port, upstream, "off", rate_limits=spec
        )
        command = [PYTHON, "-m", "gateway", "run", "-c", str(config)]
        self.launch(target, name, command)

    def _start_orders_gateway(self, target: Target) -> None:
        """k to n: the POST route to the orders service; l with idempotency keys, n with
        the order schema. k and l POST the 100-byte order with a new key each time, m
        and n the 2 KB one."""
        key = target.key
        small = key in ("k", "l")
        if not small:
            check_order_schema(self.order)
        target.body = json.dumps(SMALL_ORDER).encode() if small else self.order_body
        target.unique_keys = small
        name = {
            "k": "gateway-post",
            "l": "gateway-idempotency",
            "m": "gateway-post-2k",
            "n": "gateway-validation",
        }[key]
        target.script = post_script(self.workdir / "wrk", key, target.body, target.unique_keys)
        config = orders_gateway_config(
            self.workdir / name,
            target.port,
            self.upstreams["orders"].origin,
            idempotency=BENCH_IDEMPOTENCY if key == "l" else None,
            validation={"body": ORDER_SCHEMA} if key == "n" else None,
        )
        command = [PYTHON, "-m", "gateway", "run", "-c", str(config)]
        self.launch(target, name, command)

    def _check_orders(self, target: Target) -> None:
        """k to n answer their POST with 201 (and Server-Timing: the gateway's answer).

        l must replay a repeated key (``Idempotent-Replayed: true``, the same body, no
        second order upstream), k must not (its route has no idempotency: two orders);
        n must refuse with 422 the order with a broken nested sku, which m passes on
        (the orders service accepts it). Otherwise a route without the feature, or a
        schema that checks nothing, would be measured as the feature's cost.
        """
        assert target.body is not None
        what, origin = NAMES[target.key], self.upstreams["orders"].origin
        headers = {"Idempotency-Key": f'"probe-{target.key}"'} if target.unique_keys else {}
        before = orders_made(origin)
        status, answer, first = post(target.url, target.body, headers)
        lower = {name.lower(): value for name, value in answer.items()}
        if status != 201:
            raise BenchError(f"{what}: POST {target.url} answered {status}: {first[:300]!r}")
        if "server-timing" not in lower:
            raise BenchError("the gateway's answer has no Server-Timing: not the gateway?")
        if "idempotent-replayed" in lower:
            raise BenchError(f"{what}: a new key was answered as a replay")
        if target.unique_keys:
            status, answer, again = post(target.url, target.body, headers)
            replayed = {name.lower(): value for name, value in answer.items()}.get(
                "idempotent-replayed"
            )
            made = orders_made(origin) - before - 1
            if target.key == "l":
                if status != 201 or replayed != "true":
                    raise BenchError(
                        f"{what}: the same key again answered {status} with "
                        f"Idempotent-Replayed: {replayed}: the route does not replay"
                    )
                if again != first:
                    raise BenchError(f"{what}: the replay's body differs from the answer")
                if made != 1:
                    raise BenchError(f"{what}: {made} orders upstream for a request and its replay")
            elif status != 201 or replayed is not None or made != 2:
                raise BenchError(
                    f"{what}: the same key again answered {status} (Idempotent-Replayed: "
                    f"{replayed}, {made} orders upstream): k's route must not replay"
                )
            return
        broken = json.dumps(invalid_order(self.order), separators=(",", ":")).encode()
        status, _, problem = post(target.url, broken)
        if target.key == "m":
            if status != 201:
                raise BenchError(f"{what}: the order with a broken sku answered {status}")
            return
        if status != 422 or b"/items/" not in problem:
            raise BenchError(
                f"{what}: the order with a broken sku answered {status}, expected 422 "
                f"naming /items/...: {problem[:300]!r}"
            )

    def _check(self, target: Target) -> None:
        """Wait for the server, record its pinning, and make sure it answers properly."""
        proc = target.proc
        if proc is not None:
            wait_ready(proc, target.port)
            nginx = target.key == "c"
            self.record_pinning(proc, f"server under test{' (master + worker)' if nginx else ''}")
            # nginx forks its worker after it starts listening: look for it only now.
            target.server_pids = [proc.pid, *child_pids(proc.pid)]
        if target.key in ORDERS_VARIANTS:
            self._check_orders(target)
            return
        if target.client is not None:
            token_url = f"http://{HOST}:{target.port}/oauth/token"
            token = fetch_token(token_url, target.client, self.token_ttl_s / 2)
            target.headers = {"Authorization": f"Bearer {token}"}
        what = NAMES[target.key]
        if target.key in CACHED:
            self._check_cached(target)
            return
        decided = target.redis.decisions() if target.redis is not None else 0
        headers = expect_ok(target.url, what, target.headers)
        if target.key in GATEWAY_PROXIES and "Server-Timing" not in headers:
            raise BenchError("the gateway's answer has no Server-Timing: not the gateway?")
        if target.key in RATE_LIMITED:
            check_rate_limited(headers, what, target.redis is not None)
        if target.redis is not None and target.redis.decisions() <= decided:
            raise BenchError(f"{what}: the probe was answered without a Redis decision")
        if target.headers:
            # The credential must be what makes the 200: refused without it or forged.
            expect_status(target.url, f"{what}, without a credential", 401)
            for forgery, forged in tampered_credentials(target.key, target.headers).items():
                expect_status(target.url, f"{what}, with {forgery}", 401, forged)
            # ...and still accepted afterwards (nothing above spoilt a cache).
            expect_ok(target.url, what, target.headers)

    def _check_cached(self, target: Target) -> None:
        """o and p: the first GET is stored, the second is a hit with an ETag; p then
        sends that ETag in If-None-Match, which must answer 304 with no body.

        A route that stored nothing (a 200 from the upstream each time), or a p whose
        tag matched nothing (full 200s), would otherwise be measured as the cache.
        """
        what = NAMES[target.key]
        first = expect_ok(target.url, what)
        if "Server-Timing" not in first:
            raise BenchError("the gateway's answer has no Server-Timing: not the gateway?")
        second = {name.lower(): value for name, value in expect_ok(target.url, what).items()}
        cache_status = second.get("cache-status", "")
        if not cache_status.startswith("gateway; hit"):
            raise BenchError(
                f"{what}: the second GET is not a hit (Cache-Status: {cache_status!r})"
            )
        etag = second.get("etag")
        if not etag:
            raise BenchError(f"{what}: the cached answer has no ETag")
        target.cache_status = cache_status
        if target.key != "p":
            return
        target.headers = {"If-None-Match": etag}
        self._check_not_modified(target)

    @staticmethod
    def _check_not_modified(target: Target) -> None:
        """p's request (If-None-Match: the entry's ETag) answers 304 with no body."""
        status, _, body = fetch(target.url, target.headers)
        if status != 304 or body:
            raise BenchError(
                f"{NAMES[target.key]}: If-None-Match: {target.headers['If-None-Match']} "
                f"answered {status} with {len(body)} bytes, expected 304 with none"
            )

    def _measure_rounds(self, targets: list[Target]) -> None:
        live = {target.key: target for target in targets if target.error is None}
        self.orders = round_orders(list(live), self.rounds)
        if not live:
            return
        for number, order in enumerate(self.orders, start=1):
            if number > 1:
                # Every round measures server processes of its own: two processes of
                # one program, same config, run a few per cent apart for as long as
                # they live (memory layout, hash seed), which a pair's ratio would
                # otherwise carry through every round.
                self._start_afresh([live[key] for key in order])
            # A warm-up run per server, discarded, before the round's measured runs:
            # connections, caches and code paths warm.
            for key in order:
                target = live[key]
                if target.error is not None:
                    continue
                self.say(f"[round {number}/{self.rounds}] [{key}] warm-up {ROUND_WARMUP_S:g}s")
                warm_up = functools.partial(
                    wrk,
                    target.url,
                    ROUND_WARMUP_S,
                    self.cores,
                    target.headers,
                    *target.next_script(),
                )
                text = self._guard(target, warm_up)
                target.stored_keys = 0
                if text is not None and target.unique_keys:
                    with contextlib.suppress(BenchError):
                        target.stored_keys = parse_wrk(text)["requests"] or 0
            for position, key in enumerate(order, start=1):
                target = live[key]
                if target.error is not None:
                    continue
                upstream = self.upstreams[target.upstream]
                if upstream.proc.popen.poll() is not None:
                    # Every proxy in front of it would now measure fast 502s: stop them,
                    # keeping the rounds so far.
                    error = exited(upstream.proc, f"during round {number}")
                    self.say(f"FAILED: {error}")
                    for other in live.values():
                        if other.upstream == target.upstream:
                            other.error = other.error or error
                    continue
                self.say(f"[round {number}/{self.rounds}] [{key}] {NAMES[key]}: {self.round_s}s")
                # The other servers and the other sample service wait, idle.
                idle = [
                    pid
                    for other in targets
                    if other is not target and other.proc is not None
                    for pid in other.server_pids
                ] + [other.proc.pid for other in self.upstreams.values() if other is not upstream]
                watch = {
                    "upstream": [upstream.proc.pid],
                    "idle_servers": idle,
                    **self._redis_watch(targets),
                }
                if target.server_pids:
                    watch["server"] = target.server_pids
                measure = functools.partial(self._measure, target, watch, upstream)
                result = self._guard(target, measure)
                if result is not None:
                    if target.unique_keys:
                        result["records_stored_before"] = target.stored_keys
                        target.stored_keys += result["requests"] or 0
                    target.runs.append({"round": number, "position": position, **result})

    def _start_afresh(self, targets: Sequence[Target]) -> None:
        """Stop the servers under test and start each again as it first was, then
        check it as before the first round (h fetches a new token, p a new ETag)."""
        restarted = [
            (target, target.proc, target.command)
            for target in targets
            if target.error is None and target.proc is not None and target.command is not None
        ]
        for _, proc, _ in restarted:
            self.procs.stop(proc)
        for target, proc, command in restarted:
            target.proc = self.start_server(proc.name, command)
        for target, _, _ in restarted:
            self._guard(target, functools.partial(self._check, target))

    @staticmethod
    def _redis_watch(targets: Sequence[Target]) -> dict[str, list[int]]:
        """j's redis-server, watched in every run: idle in all but j's (and counted
        as ours, not as another program's noise)."""
        pids = [target.redis.proc.pid for target in targets if target.redis is not None]
        return {"redis": pids} if pids else {}

    def _measure(
        self, target: Target, watch: dict[str, list[int]], upstream: Upstream
    ) -> dict[str, Any]:
        """One measured run, refused when it did not measure what it claims to.

        Error answers are fast: a 401 storm (g's key or h's token refused mid-run) or
        502s (the users service gone) would otherwise pass for a fast server. So are
        j's requests admitted without a Redis decision (``fail_open`` when Redis does
        not answer in time): j's run must have cost Redis one decision per response.
        And so are replays (l's answer to a key it has seen, without the upstream): each
        run of k to n must have created one order upstream per response at least.
        """
        decided = target.redis.decisions() if target.redis is not None else 0
        made = orders_made(upstream.origin) if upstream.kind == "orders" else 0
        result = measure_wrk(
            target.url, self.round_s, self.cores, watch, target.headers, *target.next_script()
        )
        if upstream.proc.popen.poll() is not None:
            raise BenchError(exited(upstream.proc, "during this run"))
        if result["non_2xx"]:
            # wrk counts the answers with a status over 399 ("Non-2xx or 3xx"): 200s
            # and p's 304s are never in it; any 4xx or 5xx puts the variant in error.
            hint = ": was the credential refused?" if target.headers else ""
            expected = "2xx" if target.status == 200 else f"2xx or {target.status}"
            raise BenchError(
                f"{result['non_2xx']} of {result['requests']} responses were not {expected}{hint}"
            )
        if target.status == 304:
            # Still 304 after the run: the entry did not expire or change mid-run.
            self._check_not_modified(target)
        if upstream.kind == "orders":
            # Minus the probe's own order; requests in flight when wrk stopped reached
            # the upstream too, so there may be a few more orders, never fewer.
            made = orders_made(upstream.origin) - made - 1
            result["orders_created"] = made
            if result["requests"] is None or made < result["requests"]:
                raise BenchError(
                    f"{made} orders created upstream for {result['requests']} responses: "
                    "the others never reached it (replayed?)"
                )
        if target.redis is not None:
            decided = target.redis.decisions() - decided
            result["redis_decisions"] = decided
            # wrk counts the responses it read; requests still in flight when it stopped
            # were decided too, so there may be a few more decisions, never fewer.
            if result["requests"] is None or decided < result["requests"]:
                raise BenchError(
                    f"{decided} Redis decisions for {result['requests']} responses: the "
                    "others were admitted without one (Redis unreachable or too slow?)"
                )
        return result

    def _guard(self, target: Target, call: Callable[[], _T]) -> _T | None:
        """``call()``, or None with the target marked failed if it raised.

        A server that died is caught here rather than measured as a storm of socket
        errors; a failed variant is left out of the remaining rounds.
        """
        try:
            if target.proc is not None and target.proc.popen.poll() is not None:
                raise BenchError(
                    f"{target.proc.name} exited with {target.proc.popen.returncode}:\n"
                    f"{target.proc.log_tail()}"
                )
            return call()
        except BenchError as exc:
            self.say(f"[{target.key}] FAILED: {exc}")
            target.error = str(exc)
            return None

    def _record(self, target: Target) -> None:
        result: dict[str, Any] = {"name": NAMES[target.key]}
        if target.error is not None:
            result["error"] = target.error
        if target.runs:
            result.update(summarise_rounds(target.runs))
        result["tool"] = (
            f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{self.round_s}s, "
            f"{len(target.runs)} of {self.rounds} rounds"
        )
        result["url"] = target.url
        if target.key in CACHED:
            result["cache"] = BENCH_CACHE
            result["conditional"] = BENCH_CONDITIONAL
            result["probe_cache_status"] = target.cache_status
            result["expected_status"] = target.status
            if target.headers:
                result["if_none_match"] = target.headers.get("If-None-Match")
        elif target.headers:
            # Which header carried the credential; never the credential itself.
            result["credential_header"] = next(iter(target.headers))
        if target.rate_limits is not None:
            result["rate_limits"] = target.rate_limits
            result["rate_limit"] = BENCH_ROUTE_LIMIT
        if target.redis is not None and target.runs:
            result["redis_decisions"] = sum(run.get("redis_decisions", 0) for run in target.runs)
        if target.key in ORDERS_VARIANTS:
            result["upstream"] = f"orders service, POST {ORDERS_PATH}"
            result["body_bytes"] = len(target.body or b"")
            result["idempotency_key_per_request"] = target.unique_keys
            if target.runs:
                result["orders_created"] = sum(run.get("orders_created", 0) for run in target.runs)
        if target.key == "l":
            result["idempotency"] = BENCH_IDEMPOTENCY
            # Every request left a record (none expire within a run), in the process
            # of its round: the most one held, about (wrk's responses; a few in flight
            # at each run's end are not counted).
            result["records_stored"] = max(
                (run["records_stored_before"] + (run.get("requests") or 0) for run in target.runs),
                default=0,
            )
        if target.key == "n":
            result["validation"] = {"body": ORDER_SCHEMA}
        if target.access_log is not None and target.runs:
            # Read once the gateway has drained and exited: only then is the log complete.
            path = target.access_log
            size = path.stat().st_size if path.exists() else 0
            count = 0
            if path.exists():
                with path.open("rb") as lines:
                    count = sum(1 for _ in lines)
            result["access_log"] = {"lines": count, "bytes": size}
        self.variants[target.key] = result

    # -- j's Redis decisions, timed by the gateway: an open loop against j, then d -------

    def _measure_rate_limit_open_loop(self, targets: Sequence[Target], users: Proc) -> None:
        """The time j's Redis decisions take, from j's ``ratelimit;dur=`` Server-Timing.

        After the rounds, with every server still up and warm: an open loop at
        RATE_LIMIT_OPEN_RATE req/s for ``duration`` seconds against j, then the same
        against d, back to back. The first gives the decisions' own p50 and p99 (the
        barred figure, measured inside the gateway); the pair gives the end-to-end
        view, j's latency next to d's at the same moderate load.
        """
        if "j" not in self.only:
            return
        live = {target.key: target for target in targets if target.error is None}
        out: dict[str, Any] = {
            "tool": f"gateway.loadgen open loop, {RATE_LIMIT_OPEN_RATE:g} req/s for "
            f"{self.duration:g}s after a {WARMUP_S:g}s warm-up, "
            + ("j then d" if "d" in live else "j"),
            "rate": RATE_LIMIT_OPEN_RATE,
        }
        self.rate_limit_open = out
        j = live.get("j")
        if j is None:
            out["skipped"] = "j is in error"
            return
        try:
            for key in ("j", "d"):
                target = live.get(key)
                if target is None:
                    continue
                self.say(
                    f"[{key}] {NAMES[key]}: open loop at {RATE_LIMIT_OPEN_RATE:g} req/s "
                    f"for {self.duration:g}s"
                )
                out[key] = self._open_loop(target, targets, users)
        except BenchError as exc:
            self.say(f"[j] open loop FAILED: {exc}")
            out["error"] = str(exc)
            return
        if "d" in out:
            out["end_to_end"] = {
                figure: {
                    "j": out["j"][figure],
                    "d": out["d"][figure],
                    "j_minus_d": round(out["j"][figure] - out["d"][figure], 3),
                    "j_over_d": round(out["j"][figure] / out["d"][figure], 3)
                    if out["d"][figure]
                    else None,
                }
                for figure in ("p50_ms", "p90_ms", "p99_ms")
            }

    def _measure_cache_ttl(self, targets: Sequence[Target], counting: Upstream) -> None:
        """At most one upstream request per TTL per key under load.

        After the rounds, on o's gateway: an open loop at CACHE_TTL_OPEN_RATE req/s for
        ``duration`` seconds (no warm-up: the first request is the key's first miss)
        against one URL of the CACHE_TTL_S route, while the counting upstream's own
        counter tells how many requests reached it.
        """
        live = {target.key: target for target in targets if target.error is None}
        url_path = CACHE_TTL_URL_PATH
        out: dict[str, Any] = {
            "tool": f"gateway.loadgen open loop, {CACHE_TTL_OPEN_RATE:g} req/s for "
            f"{self.duration:g}s, no warm-up, one URL ({url_path}) on o's gateway",
            "rate": CACHE_TTL_OPEN_RATE,
            "duration_s": self.duration,
            "ttl_s": CACHE_TTL_S,
            "limit": cache_ttl_limit(self.duration),
        }
        self.cache_ttl = out
        o = live.get("o")
        if o is None:
            out["skipped"] = "o is in error"
            return
        url = f"http://{HOST}:{o.port}{url_path}"
        self.say(
            f"[o] cache TTL ({CACHE_TTL_S}s): open loop at {CACHE_TTL_OPEN_RATE:g} req/s "
            f"for {self.duration:g}s on one key"
        )
        try:
            if o.proc is not None and o.proc.popen.poll() is not None:
                raise BenchError(exited(o.proc, "before the TTL check"))
            before = upstream_count(counting.origin)
            watch = {"server": o.server_pids, "upstream": [counting.proc.pid]}
            summary, result = measure_open_loop(
                url, CACHE_TTL_OPEN_RATE, self.duration, watch, warmup=0.0
            )
            if counting.proc.popen.poll() is not None:
                raise BenchError(exited(counting.proc, "during the TTL check"))
            made = upstream_count(counting.origin) - before
            statuses = result.status_counts()
            if set(statuses) != {"200"}:
                raise BenchError(f"the TTL route answered other than 200: {statuses}")
            if made < 1:
                raise BenchError("no request reached the counting upstream: not proxied?")
        except BenchError as exc:
            self.say(f"[o] TTL check FAILED: {exc}")
            out["error"] = str(exc)
            return
        out.update({k: v for k, v in summary.items() if k not in ("tool", "rate")})
        out["upstream_requests"] = made

    def _measure_validation_open_loop(self, targets: Sequence[Target], orders: Proc) -> None:
        """What validating a 2 KB body adds to a request's latency at a moderate load.

        The closed loop (wrk, 32 connections) keeps the gateway saturated, where any
        added CPU multiplies into queueing (32 x the added µs). The issue's figure is
        the latency validation adds to a request, so m and n also run under an open loop
        of POSTs at VALIDATION_OPEN_RATE req/s, in VALIDATION_OPEN_ROUNDS rounds that
        alternate which of the two goes first; the barred figure is the median over the
        rounds of n p50 - m p50, each difference taken between two runs seconds apart.
        """
        live = {target.key: target for target in targets if target.error is None}
        if "m" not in live or "n" not in live:
            return
        seconds = max(VALIDATION_OPEN_MIN_S, self.duration / VALIDATION_OPEN_ROUNDS)
        out: dict[str, Any] = {
            "tool": f"gateway.loadgen open loop of POSTs, {VALIDATION_OPEN_RATE:g} req/s, "
            f"{VALIDATION_OPEN_ROUNDS} rounds of m and n alternating, {seconds:g}s each "
            f"after a {VALIDATION_OPEN_WARMUP_S:g}s warm-up",
            "rate": VALIDATION_OPEN_RATE,
            "rounds": [],
        }
        self.validation_open = out
        self.say(
            f"[m/n] open loop of POSTs at {VALIDATION_OPEN_RATE:g} req/s: "
            f"{VALIDATION_OPEN_ROUNDS} rounds of {seconds:g}s per variant, alternating"
        )
        try:
            for number in range(1, VALIDATION_OPEN_ROUNDS + 1):
                order = ("m", "n") if number % 2 else ("n", "m")
                measured: dict[str, Any] = {"round": number, "order": list(order)}
                for key in order:
                    target = live[key]
                    watch = {"server": target.server_pids, "upstream": [orders.pid]}
                    summary, result = measure_open_loop(
                        target.url,
                        VALIDATION_OPEN_RATE,
                        seconds,
                        watch,
                        {**target.headers, "Content-Type": "application/json"},
                        method="POST",
                        body=target.body,
                        warmup=VALIDATION_OPEN_WARMUP_S,
                    )
                    statuses = result.status_counts()
                    if set(statuses) != {"201"}:
                        raise BenchError(f"{NAMES[key]}: answers other than 201: {statuses}")
                    measured[key] = summary
                for figure in ("p50_ms", "p99_ms"):
                    added = measured["n"][figure] - measured["m"][figure]
                    measured[f"added_{figure}"] = round(added, 3)
                out["rounds"].append(measured)
        except BenchError as exc:
            self.say(f"[m/n] open loop FAILED: {exc}")
            out["error"] = str(exc)
            return
        rounds = out["rounds"]
        for key in ("m", "n"):
            out[key] = {
                figure: median_of([run[key][figure] for run in rounds])
                for figure in ("p50_ms", "p90_ms", "p99_ms", "server_cpu_us_per_request")
                if all(is_number(run[key].get(figure)) for run in rounds)
            }
        for figure in ("p50_ms", "p99_ms"):
            per_round = [run[f"added_{figure}"] for run in rounds]
            out[f"added_{figure}"] = median_of(per_round)
            out[f"added_{figure}_per_round"] = per_round

    def _open_loop(self, target: Target, targets: Sequence[Target], users: Proc) -> dict[str, Any]:
        """One open loop against ``target``; for j, the ``ratelimit`` entries' figures."""
        if target.proc is not None and target.proc.popen.poll() is not None:
            raise BenchError(exited(target.proc, "before the open loop"))
        watch = {
            "server": target.server_pids,
            "upstream": [users.pid],
            **self._redis_watch(targets),
        }
        decided = target.redis.decisions() if target.redis is not None else 0
        summary, result = measure_open_loop(
            target.url, RATE_LIMIT_OPEN_RATE, self.duration, watch, target.headers
        )
        if users.popen.poll() is not None:
            raise BenchError(exited(users, "during the open loop"))
        statuses = result.status_counts()
        if set(statuses) != {"200"}:
            raise BenchError(f"{NAMES[target.key]}: answers other than 200: {statuses}")
        if target.redis is None:
            return summary
        # The warm-up's requests were decided too: count them (as _schedule does).
        sent = max(1, round(RATE_LIMIT_OPEN_RATE * WARMUP_S)) + len(result.samples)
        decided = target.redis.decisions() - decided
        summary["redis_decisions"] = decided
        if decided < sent:
            raise BenchError(
                f"{decided} Redis decisions for {sent} requests: the others were admitted "
                "without one (Redis unreachable or too slow?)"
            )
        durations = [
            dur
            for sample in result.samples
            for name, dur, _desc in parse_server_timing(sample.server_timing or "")
            if name == "ratelimit" and dur is not None
        ]
        if len(durations) != len(result.samples):
            raise BenchError(
                f"{len(result.samples) - len(durations)} of {len(result.samples)} answers "
                "had no ratelimit;dur= in Server-Timing"
            )
        summary["ratelimit_ms"] = {
            "p50": percentile(durations, 50),
            "p90": percentile(durations, 90),
            "p99": percentile(durations, 99),
            "max": percentile(durations, 100),
            "mean": round(statistics.fmean(durations), 3),
            "samples": len(durations),
        }
        return summary

    # -- e and f: five services and a fan-out route ------------------------------------

    def run_fanouts(self) -> None:
        keys = ("e", "f")
        if not set(keys) & set(self.only):
            return
        try:
            self._run_fanouts()
        except BenchError as exc:
            self.setup_failed(keys, exc)

    def _run_fanouts(self) -> None:
        ports = {kind: self.port() for kind in KINDS}
        services = self.procs.start(
            "services",
            self.cores.wrap(services_command(ports, "5ms", "6ms"), self.cores.load),
        )
        try:
            for port in ports.values():
                wait_ready(services, port)
            self.record_pinning(services, "upstreams (load core)")
            origins = {kind: f"http://{HOST}:{port}" for kind, port in ports.items()}
            port = self.port()
            config = fanout_gateway_config(self.workdir / "gateway-fanout", port, origins)
            command = [PYTHON, "-m", "gateway", "run", "-c", str(config)]
            with self.server("gateway-fanout", command) as gateway:
                wait_ready(gateway, port)
                self.record_pinning(gateway, "server under test")
                base = f"http://{HOST}:{port}"
                watch = {"server": [gateway.pid], "upstream": [services.pid]}
                self.variant("e", lambda: self._fanout(f"{base}/fanout/42", watch))
                self.variant("f", lambda: self._fanout_slow(f"{base}/fanout-slow/42", watch))
        finally:
            self.procs.stop(services)

    def _fanout(self, url: str, watch: dict[str, list[int]]) -> dict[str, Any]:
        expect_ok(url, "fan-out route")
        summary, _ = measure_open_loop(url, FANOUT_RATE, self.duration, watch)
        summary["bars"] = {
            f"p99_ms<={BAR_FANOUT_P99_MS:g}": bar_outcome(
                summary["p99_ms"] <= BAR_FANOUT_P99_MS, summary["p99_ms"]
            ),
        }
        return summary

    def _fanout_slow(self, url: str, watch: dict[str, list[int]]) -> dict[str, Any]:
        headers = expect_ok(url, "slow fan-out route")
        if "Gateway-Partial" not in headers:
            raise BenchError("the slow fan-out answered without Gateway-Partial")
        summary, _ = measure_open_loop(url, SLOW_RATE, self.duration, watch)
        summary["bars"] = {
            f"p99_ms<={BAR_SLOW_P99_MS:g}": bar_outcome(
                summary["p99_ms"] <= BAR_SLOW_P99_MS, summary["p99_ms"]
            ),
            "partial_share==100%": bar_outcome(
                summary["partial_share"] == 1.0, summary["partial_share"]
            ),
        }
        return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds measured per variant (10); the closed-loop variants (a to d2, g to p) "
        "split them over the rounds; the open loops (e, f, j's and d's at "
        f"{RATE_LIMIT_OPEN_RATE:g} req/s) last that long after a {WARMUP_S:g} s warm-up, "
        f"o's TTL check ({CACHE_TTL_OPEN_RATE:g} req/s, one key) that long without one; "
        "a full run with the defaults takes about 4 minutes",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"interleaved rounds of the closed-loop variants a to d2, g to p ({DEFAULT_ROUNDS}); "
        f"each wrk run lasts duration/rounds s, rounded up, at least {MIN_ROUND_S} s",
    )
    parser.add_argument(
        "--only",
        default=",".join(ALL_VARIANTS),
        help="comma-separated variants (all: %(default)s); g to j, o and p, like b to d2, "
        "also start the users service, k to n the orders service; o also starts "
        "bench/counting_upstream.py and, after the rounds, its TTL check; j also starts a private "
        "redis-server ($REDIS_SERVER or redis-server on PATH) and, after the rounds, the "
        "open loops against j and d; n also times its validator in-process",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="JSON results file (%(default)s)"
    )
    args = parser.parse_args(argv)
    only = tuple(v.strip() for v in args.only.split(",") if v.strip())
    unknown = sorted(set(only) - set(ALL_VARIANTS))
    if unknown or not only:
        parser.error(f"--only takes variants among {', '.join(ALL_VARIANTS)}; got {unknown}")
    if not args.duration >= 1:
        parser.error("--duration must be at least 1 second")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if shutil.which("wrk") is None and set(only) & set(CLOSED_LOOP):
        parser.error("wrk is not on PATH (variants a to d2 and g to p need it)")

    # SIGTERM (a CI timeout, `kill`) must unwind through the finally blocks like Ctrl-C.
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    cores = Cores.pick()
    if cores.pinned and shutil.which("taskset") is None:
        cores = Cores(None, None)
    if cores.load is not None:
        # The harness is the open-loop generator: keep it off the server's core.
        os.sched_setaffinity(0, {cores.load})
    else:
        print("warning: fewer than 2 cores (or no taskset): nothing is pinned", file=sys.stderr)

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    procs = Processes(workdir)
    run = Run(args.duration, args.rounds, only, cores, procs, workdir)
    run.pinning["harness"] = {"role": "load generator", "pids": {str(os.getpid()): affinity_of(0)}}
    try:
        run.run_proxies()
        run.run_fanouts()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every server", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    # Machine-independent, next to the throughput figures: what the same variants run in
    # Python per request (bench.pycost), counted after the servers above have stopped.
    counted = [key for key in pycost.VARIANTS if key in only]
    python_instructions = None
    if counted:
        print("counting Python instructions per request (bench.pycost)...", file=sys.stderr)
        try:
            python_instructions = pycost.in_subprocess(counted)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130

    ratio = ratios(run.variants)
    validation = validation_cost(run.variants, run.validation_micro)
    open_loops = {
        f"{key} open loop": run.rate_limit_open[key]
        for key in ("j", "d")
        if run.rate_limit_open is not None and key in run.rate_limit_open
    }
    report: dict[str, Any] = {
        "duration_s": args.duration,
        "rounds": run.rounds,
        "round_s": run.round_s,
        "round_orders": run.orders,
        "warmup_s": WARMUP_S,
        "round_warmup_s": ROUND_WARMUP_S,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine_info(cores),
        "variants": run.variants,
        "ratios": ratio,
        "rate_limit_open_loop": run.rate_limit_open,
        "validation": validation,
        "validation_open_loop": run.validation_open,
        "cache_ttl": run.cache_ttl,
        "python_instructions": python_instructions,
        "bars": {
            **closed_loop_bars(ratio),
            **validation_bars(validation, run.validation_open),
            **rate_limit_open_loop_bars(run.rate_limit_open),
            **cache_ttl_bars(run.cache_ttl),
            **{
                f"{key}.{bar}": outcome
                for key in ("e", "f")
                for bar, outcome in run.variants.get(key, {}).get("bars", {}).items()
            },
        },
        "noise": noise({**run.variants, **open_loops}),
        "pinning": run.pinning,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"results: {args.output}  ({report['elapsed_s']:g}s)")
    failed = [name for name, outcome in report["bars"].items() if not outcome["pass"]]
    broken = [key for key, v in run.variants.items() if "error" in v]
    if run.rate_limit_open is not None and "error" in run.rate_limit_open:
        broken.append("j open loop")
    if run.cache_ttl is not None and "error" in run.cache_ttl:
        broken.append("o's TTL check")
    if run.validation_micro is not None and "error" in run.validation_micro:
        broken.append("n's validator microbenchmark")
    if failed or broken:
        print(f"FAILED: bars {failed or 'none'}; variants in error {broken or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
