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

a to d2 and g to r are closed-loop throughput runs with wrk (``-t1 -c32``; k to n with
a Lua script that POSTs their body). Their servers are all started once and measured in
interleaved rounds (b, o, i, d, j, p, g, h, k, l, n, m, c, d2, q, r, a, the order rotated by
one each round), each wrk run lasting duration/rounds seconds (rounded up, at least 3)
after a single warm-up run per server. A shared machine's throughput drifts by 10-15 %
within minutes, so comparing two variants measured minutes apart compares the machine
too: each ratio (d/b, d/c, d2/b, g/d, h/d, i/d, j/d, l/k, n/m, o/d, p/d) and n's added latency and
CPU (n - m) are computed within each round and the median over the rounds is reported,
as is each variant's median rps, latency and CPU per request. k to n proxy to a second
sample service, ``orders``, on the load core next to the ``users`` one. g's key and h's
OAuth client are created with the gateway's CLI in a temporary credential store; before
measuring, g and h must answer 200 with their credential and 401 without it or with a
tampered one; i and j must answer 200 with ``RateLimit-Policy`` and ``RateLimit`` (j
also with ``ratelimit;dur=`` in ``Server-Timing``). A run with any non-2xx answer (401s
and 502s are fast) puts its variant in error, and so does a run of j with fewer Redis
decisions (EVALSHAs counted by the redis-server) than responses: a request admitted
without one (``fail_open``) is fast too. (wrk counts answers over 399 only, so p's
304s are accepted; o's and p's second probe GET must be ``Cache-Status: gateway; hit``
with an ETag, and p's probe, before measuring and after each run, a 304 with no body.)
k to n must answer 201; l must replay a repeated key
(``Idempotent-Replayed: true``, no upstream call) and k must not; n must refuse with 422
a body that breaks its schema, which m passes on; and each run of k to n must have
created at least one order upstream per response (the orders service numbers them):
fewer would mean replays, fast answers that skip the upstream.

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
import asyncio
import base64
import contextlib
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import aiohttp
import uvloop
import yaml

from gateway.loadgen import LoadResult, parse_server_timing, percentile, run_open_loop

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
PYTHON = sys.executable
HOST = "127.0.0.1"

ALL_VARIANTS = (
    "a",
    "b",
    "c",
    "d",
    "d2",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "p",
    "q",
    "r",
)
#: The variants measured with wrk in interleaved rounds: a to j and o to r in front of
#: the users service, k to n in front of the orders service.
CLOSED_LOOP = (
    *("a", "b", "c", "d", "d2", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p"),
    *("q", "r"),
)
#: The gateway's proxy route, with (g, h) or without (d, d2) authentication, or with a
#: rate limit (i, j); its POST route to the orders service (k to n).
GATEWAY_PROXIES = ("d", "d2", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r")
#: d's route with a response cache: every GET a hit (o), every GET with the entry's
#: ETag in If-None-Match a 304 (p).
CACHED = ("o", "p")
#: The POST routes to the orders service: with (l) or without (k) idempotency keys, a
#: 100-byte body; with (n) or without (m) validation, a 2 KB body.
ORDERS_VARIANTS = ("k", "l", "m", "n")
#: The rate-limited proxy routes and their limiter's store.
RATE_LIMITED = {"i": "memory", "j": "redis"}
NAMES = {
    "a": "users service, direct",
    "b": "baseline aiohttp proxy",
    "c": "nginx reverse proxy",
    "d": "gateway proxy route",
    "d2": "gateway proxy route + access log",
    "e": "gateway fan-out x5",
    "f": "gateway fan-out x5, one slow",
    "g": "gateway proxy route + API key",
    "h": "gateway proxy route + JWT (ES256)",
    "i": "gateway proxy route + rate limit (memory)",
    "j": "gateway proxy route + rate limit (Redis)",
    "k": "gateway POST route, 100 B body",
    "l": "gateway POST route + idempotency (memory)",
    "m": "gateway POST route, 2 KB body",
    "n": "gateway POST route + validation (2 KB)",
    "o": "gateway proxy route + cache (hits)",
    "p": "gateway proxy route + cache (304s)",
    "q": "gateway proxy route, observability off",
    "r": "gateway proxy route + metrics, tracing, log",
}
#: q's and r's ``metrics:`` and ``tracing:`` switches: all off (q) or all on (r, whose
#: access log is on too).
OBSERVABILITY = {"q": False, "r": True}
KINDS = ("users", "orders", "recommendations", "inventory", "notifications")
USER_PATH = "/users/42"
ORDERS_PATH = "/orders"

WRK_THREADS = 1
WRK_CONNECTIONS = 32
WARMUP_S = 2.0
FANOUT_BUDGET_MS = 50
FANOUT_RATE = 200.0
SLOW_RATE = 100.0
SLOW_DELAY = "500ms"
BAR_FANOUT_P99_MS = 15.0
BAR_SLOW_P99_MS = FANOUT_BUDGET_MS + 10.0
#: The consumer that g's API key and h's OAuth client belong to.
BENCH_CONSUMER = "bench"
BENCH_SCOPE = "bench"
#: The shortest lifetime of h's token; longer runs get a longer one (plan_token_ttl_s).
MIN_TOKEN_TTL_S = 3600
#: i's and j's route limit: decided on every request, by client IP and with no plan,
#: so large that it never refuses (wrk's 32 connections come from one IP).
BENCH_ROUTE_LIMIT: dict[str, Any] = {
    "by": "ip",
    "plan": False,
    "limit": {"rate": "1000000/s", "burst": 1000000},
}
#: What i's and j's RateLimit-Policy must announce: that limit's burst.
BENCH_LIMIT_POLICY = "q=1000000"
#: j's Redis decisions may take this long before the route admits without one.
REDIS_TIMEOUT = "50ms"
#: The rate of the open loop that measures the time of j's Redis decisions (and the
#: same open loop against d, back to back, for the end-to-end view).
RATE_LIMIT_OPEN_RATE = 500.0
#: The bar on the p50 of j's ``ratelimit`` Server-Timing entries, in ms.
BAR_RATE_LIMIT_ADDED_P50_MS = 0.5
#: l's route: idempotency keys with the defaults (the memory store, a 24 h TTL).
BENCH_IDEMPOTENCY: dict[str, Any] = {}
#: The floor of the median per-round l/k req/s ratio (the ``idempotency_memory`` bar).
BAR_IDEMPOTENCY_MEMORY = 0.85
#: The rate of the open loop of POSTs against m and n (``validation_added_p50``).
VALIDATION_OPEN_RATE = 300.0
#: That open loop runs in this many rounds, m and n alternating (m first in the odd
#: rounds, n in the even ones), each run duration / rounds seconds but at least
#: VALIDATION_OPEN_MIN_S after a VALIDATION_OPEN_WARMUP_S warm-up on its connections.
#: Run back to back once each, m and n measured the machine of two different moments:
#: their p50s differed by 0.55, 0.11 and -0.29 ms in three runs of the same code.
VALIDATION_OPEN_ROUNDS = 5
VALIDATION_OPEN_MIN_S = 2.0
VALIDATION_OPEN_WARMUP_S = 0.5
#: The ceiling of n p50 - m p50, in ms (``validation_added_p50``).
BAR_VALIDATION_ADDED_P50_MS = 0.2
#: o's and p's route: d's with a response cache and conditional requests. 60 s outlasts
#: a round, and a stale entry is revalidated upstream (one request), never refused.
BENCH_CACHE: dict[str, Any] = {"ttl": "60s"}
BENCH_CONDITIONAL: dict[str, Any] = {}
#: The floor of the median per-round o/d and p/d req/s ratios (cache_hit, not_modified).
BAR_CACHE_SPEEDUP = 2.0
#: The TTL check, after the rounds: a second route on o's gateway, cached for this long,
#: in front of bench/counting_upstream.py, under an open loop at this rate on one URL.
CACHE_TTL_S = 2
CACHE_TTL_OPEN_RATE = 500.0
CACHE_TTL_PATH = "/ttl/users/{id}"
CACHE_TTL_URL_PATH = "/ttl/users/42"
#: How long each repetition of the in-process validator microbenchmark lasts, and how
#: many repetitions (the figure is their median).
MICRO_REPEAT_S = 0.2
MICRO_REPEATS = 5
#: Longest wait for one credential CLI command (it imports the gateway and opens SQLite).
CLI_TIMEOUT_S = 60.0

#: Longest wait for a started server to accept connections: the gateway imports
#: pydantic and compiles its config first, which takes a second or two on a busy core.
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


_T = TypeVar("_T")


class BenchError(RuntimeError):
    """A variant could not be measured (a server did not start, a probe failed)."""


# --- Cores and processes -----------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    """Where things run: ``server`` for the process under test, ``load`` for the rest."""

    server: int | None
    load: int | None

    @property
    def pinned(self) -> bool:
        return self.server is not None

    @classmethod
    def pick(cls) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return cls(None, None)
        return cls(available[0], available[1])

    def wrap(self, command: Sequence[str], core: int | None) -> list[str]:
        """``command`` run under ``taskset -c CORE`` (taskset execs it: same pid)."""
        if core is None:
            return list(command)
        return ["taskset", "-c", str(core), *command]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """The subprocesses of one bench run; whatever is still running at exit is stopped.

    Each one starts in a session (and so a process group) of its own: a Ctrl-C in the
    terminal then reaches only this harness, which stops them in order, and stopping
    the group also stops any children (nginx's worker).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Proc] = []

    def start(self, name: str, command: Sequence[str]) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            # Output goes to a file, never a pipe nobody reads: a full pipe would block
            # the server mid-benchmark.
            popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        if proc in self.running:
            self.running.remove(proc)
        if proc.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait()
        # The group may outlive its leader (a worker still exiting): make sure.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)

    @contextlib.contextmanager
    def running_one(self, name: str, command: Sequence[str]) -> Iterator[Proc]:
        proc = self.start(name, command)
        try:
            yield proc
        finally:
            self.stop(proc)


class PortPicker:
    """Free ephemeral ports, never the same one twice in a run.

    The port is free when picked and released before the server binds it; another
    process could take it in between, which the readiness check would then report.
    """

    def __init__(self) -> None:
        self._given: set[int] = set()

    def __call__(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((HOST, 0))
                port = int(sock.getsockname()[1])
            if port not in self._given:
                self._given.add(port)
                return port
        raise BenchError("no free port found")


def wait_ready(proc: Proc, port: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Return once ``port`` accepts connections; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.name} exited with {proc.popen.returncode} before accepting "
                f"connections:\n{proc.log_tail()}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} did not accept connections on {port} within {timeout:g}s")


def probe(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """One GET before measuring, so a misconfigured server (404s are fast) is caught."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
            return response.status, dict(response.headers.items())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items())
    except OSError as exc:
        raise BenchError(f"probe of {url} failed: {exc}") from exc


def expect_status(
    url: str, what: str, status: int, headers: dict[str, str] | None = None
) -> dict[str, str]:
    got, answer = probe(url, headers)
    if got != status:
        raise BenchError(f"{what}: GET {url} answered {got}, expected {status}")
    return answer


def expect_ok(url: str, what: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    return expect_status(url, what, 200, headers)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's worker), from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(entry.name))
    return children


def affinity_of(pid: int) -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


def taskset_report(pid: int) -> str:
    """What ``taskset -p PID`` says, as evidence in the results that pinning held."""
    if shutil.which("taskset") is None:
        return "taskset not available"
    done = subprocess.run(["taskset", "-cp", str(pid)], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip()


# --- CPU accounting ------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_lines() -> dict[str, tuple[int, int]]:
    """``cpuN -> (busy, total)`` jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            numbers = [int(v) for v in values]
            idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
            total = sum(numbers[:8])  # guest time is already in user
            out[name] = (total - idle, total)
    return out


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _all_processes() -> dict[int, tuple[str, float]]:
    """``pid -> (command name, CPU seconds)`` of every process visible in /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while being read
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        out[int(entry.name)] = (head.partition("(")[2], (int(fields[11]) + int(fields[12])) / _TICK)
    return out


class CpuMeter:
    """Busy share of each core and of each watched process over one measurement.

    This is what tells a proxy's ceiling from its upstream's or the load generator's:
    whichever process sits at ~100 % of its core is the bottleneck.
    """

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._cores = _cpu_lines()
        self._procs = {name: [_proc_cpu(pid) for pid in ids] for name, ids in pids.items()}
        self._self = resource.getrusage(resource.RUSAGE_SELF)
        self._children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._everyone = _all_processes()
        self._started = time.monotonic()

    def finish(self) -> dict[str, Any]:
        wall = time.monotonic() - self._started
        cores = _cpu_lines()
        core_share = {}
        for name, (busy, total) in cores.items():
            busy0, total0 = self._cores.get(name, (busy, total))
            core_share[name] = round((busy - busy0) / max(1, total - total0), 3)
        procs: dict[str, float | None] = {}
        for name, ids in self.pids.items():
            used = 0.0
            for pid, before in zip(ids, self._procs[name], strict=True):
                after = _proc_cpu(pid)
                if before is None or after is None:
                    continue
                used += after - before
            procs[name] = round(used / wall, 3) if wall > 0 else None
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        # wrk is the only child reaped during a wrk measurement; the harness itself is
        # the open-loop generator. Each is counted where it ran.
        harness = (me.ru_utime + me.ru_stime) - (self._self.ru_utime + self._self.ru_stime)
        reaped = (kids.ru_utime + kids.ru_stime) - (
            self._children.ru_utime + self._children.ru_stime
        )
        procs["load_generator"] = round((harness + reaped) / wall, 3) if wall > 0 else None
        # Other programs on the machine compete for the same cores (pinning keeps ours
        # apart, not theirs): a large share means the figures are noisy, whatever
        # they say. Processes that started and ended within the window are missed.
        mine = {os.getpid(), *(pid for ids in self.pids.values() for pid in ids)}
        foreign: dict[str, float] = {}
        for pid, (name, after) in _all_processes().items():
            if pid in mine:
                continue
            before = self._everyone.get(pid, (name, 0.0))[1]
            if after - before > 0:
                foreign[name] = foreign.get(name, 0.0) + after - before
        top = sorted(foreign.items(), key=lambda item: -item[1])[:3]
        others = {name: round(used / wall, 3) for name, used in top if used / wall >= 0.01}
        foreign_share = sum(foreign.values()) / wall if wall > 0 else 0.0
        # What is left: kernel work (loopback networking in softirq) and the missed.
        ours = sum(share for share in procs.values() if share is not None)
        kernel = max(0.0, sum(core_share.values()) - ours - foreign_share)
        return {
            "cores": core_share,
            "processes": procs,
            "other_processes": round(foreign_share, 3),
            "other_top": others,
            "unattributed": round(kernel, 3),
        }


# --- wrk -----------------------------------------------------------------------------------

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_WRK_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(text: str) -> dict[str, Any]:
    """requests/s, latency percentiles (ms) and error counts from ``wrk --latency``."""
    rps = _WRK_RPS.search(text)
    if rps is None:
        raise BenchError(f"cannot read wrk's output:\n{text}")
    out: dict[str, Any] = {"rps": round(float(rps[1]), 1)}
    for match in _WRK_PERCENTILE.finditer(text):
        out[f"p{match[1]}_ms"] = round(float(match[2]) * _WRK_UNITS[match[3]], 3)
    total = _WRK_TOTAL.search(text)
    out["requests"] = int(total[1]) if total else None
    non2xx = _WRK_NON2XX.search(text)
    out["non_2xx"] = int(non2xx[1]) if non2xx else 0
    sock = _WRK_SOCKET.search(text)
    out["socket_errors"] = sum(int(n) for n in sock.groups()) if sock else 0
    return out


def wrk(
    url: str,
    seconds: float,
    cores: Cores,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
    script_args: Sequence[str] = (),
) -> str:
    """wrk's output; ``headers`` go on every request (g's key, h's token); ``script``
    (k to n: a POST and its body) is a Lua script, given ``script_args``."""
    extra = [arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")]
    if script is not None:
        extra += ["-s", str(script)]
    command = cores.wrap(
        [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{WRK_CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            *extra,
            url,
            *(["--", *script_args] if script_args else []),
        ],
        cores.load,
    )
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def measure_wrk(
    url: str,
    seconds: int,
    cores: Cores,
    watch: dict[str, list[int]],
    headers: dict[str, str] | None = None,
    script: Path | None = None,
    script_args: Sequence[str] = (),
) -> dict[str, Any]:
    """One measured wrk run (no warm-up: the caller warms each server up once)."""
    meter = CpuMeter(watch)
    text = wrk(url, seconds, cores, headers, script, script_args)
    result = parse_wrk(text)
    result["cpu"] = cpu = meter.finish()
    # CPU time per request of the server under test: unlike req/s it barely moves when
    # something else competes for the cores, so it is the steadier cost figure.
    server_share = cpu["processes"].get("server")
    if server_share is not None and result["rps"]:
        result["server_cpu_us_per_request"] = round(server_share / result["rps"] * 1e6, 1)
    upstream_share = cpu["processes"].get("upstream")
    if upstream_share is not None and result["rps"]:
        result["upstream_cpu_us_per_request"] = round(upstream_share / result["rps"] * 1e6, 1)
    return result


# --- rounds: medians and same-round ratios ------------------------------------------------

#: The order of the closed-loop variants in round 1; each later round starts one further
#: along (round 2 is o, i, d, j, p, g, h, k, l, n, m, c, d2, a, b), so no variant always
#: runs first (straight after the warm-ups) or always last. d sits between i and j, with
#: b, o, p, g and h next to them, and k next to l, n next to m (the first of each pair
#: alternating), so that the runs behind the barred comparisons (d/b, o/d, p/d, g/d,
#: h/d, i/d, j/d, l/k, n - m)
#: are as close in time as the rotation allows.
ROUND_ORDER = (
    *("b", "o", "i", "d", "j", "p", "g", "h", "k", "l", "n", "m", "c", "d2"),
    *("q", "r", "a"),
)
#: wrk takes whole seconds, and a run much shorter than this is mostly ramp-up.
MIN_ROUND_S = 3
DEFAULT_ROUNDS = 3
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


@dataclass(frozen=True)
class RatioBar:
    """A bar on the median per-round rps ratio ``x_over_y``: it is at least ``floor``."""

    ratio: str
    floor: float
    what: str


#: The closed-loop bars: the proxy route keeps at least 0.9 of the bare proxy's req/s;
#: authentication (API key, cached JWT) costs the route at most 15 % and 20 % of its own;
#: a rate limit decided on every request costs it at most 5 % (in memory) and 20 % (one
#: Redis round trip); idempotency keys in memory cost the POST route at most 15 %.
CLOSED_LOOP_BARS = {
    "proxy_throughput": RatioBar("d_over_b", 0.9, "d/b"),
    "api_key_auth": RatioBar("g_over_d", 0.85, "g/d"),
    "jwt_auth": RatioBar("h_over_d", 0.8, "h/d"),
    "rate_limit_memory": RatioBar("i_over_d", 0.95, "i/d"),
    "rate_limit_redis": RatioBar("j_over_d", 0.8, "j/d"),
    "idempotency_memory": RatioBar("l_over_k", BAR_IDEMPOTENCY_MEMORY, "l/k"),
    "cache_hit": RatioBar("o_over_d", BAR_CACHE_SPEEDUP, "o/d"),
    "not_modified": RatioBar("p_over_d", BAR_CACHE_SPEEDUP, "p/d"),
    # Metrics, tracing and the access log together cost the proxy route at most 10 %.
    "observability": RatioBar("r_over_q", 0.9, "r/q"),
}


def round_seconds(duration: float, rounds: int) -> int:
    """Seconds of each wrk run: ``duration`` split over the rounds, in whole seconds.

    Rounded up, so every variant is measured for at least ``duration`` in total.
    """
    return max(MIN_ROUND_S, math.ceil(duration / rounds - 1e-9))


def round_orders(keys: Sequence[str], rounds: int) -> list[list[str]]:
    """``keys`` in ROUND_ORDER, rotated by one position per round."""
    base = [key for key in ROUND_ORDER if key in keys]
    if not base:
        return [[] for _ in range(rounds)]
    return [base[r % len(base) :] + base[: r % len(base)] for r in range(rounds)]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _median(values: Sequence[float], digits: int = 3) -> float | None:
    return round(statistics.median(values), digits) if values else None


def summarise_rounds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A variant's figures over its rounds: the median of each, plus the runs themselves.

    Medians rather than means: a round spoilt by another program on the machine moves
    a median of three by at most the gap to its neighbour, a mean by a third of the
    spike.
    """
    out: dict[str, Any] = {}
    for figure in ROUND_FIGURES:
        median = _median([run[figure] for run in runs if _number(run.get(figure))])
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
            name: _median([cpu[group][name] for cpu in cpus if _number(cpu[group].get(name))])
            for name in names
        }

    others: dict[str, float] = {}
    for cpu in cpus:
        for name, share in cpu["other_top"].items():
            others[name] = max(others.get(name, 0.0), share)
    return {
        "cores": medians("cores"),
        "processes": medians("processes"),
        "other_processes": _median([cpu["other_processes"] for cpu in cpus]),
        # The noise check looks at the worst round: one noisy round is worth knowing of
        # even when the median hides it.
        "other_processes_max": max(cpu["other_processes"] for cpu in cpus),
        "other_top": others,
        "unattributed": _median([cpu["unattributed"] for cpu in cpus]),
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
    y_runs = {run["round"]: run for run in y["rounds"]}
    per_round: dict[str, list[float]] = {
        "rps": [],
        "p50_ms": [],
        "p99_ms": [],
        "requests_per_server_cpu_s": [],
    }
    rounds = []
    for a in x["rounds"]:
        b = y_runs.get(a["round"])
        if b is None:
            continue
        rounds.append(a["round"])
        for figure in ("rps", "p50_ms", "p99_ms"):
            if _number(a.get(figure)) and _number(b.get(figure)) and b[figure]:
                per_round[figure].append(a[figure] / b[figure])
        cpu_x = a.get("server_cpu_us_per_request")
        cpu_y = b.get("server_cpu_us_per_request")
        if _number(cpu_x) and _number(cpu_y) and cpu_x:
            per_round["requests_per_server_cpu_s"].append(cpu_y / cpu_x)
    if not per_round["rps"]:
        return None
    out: dict[str, Any] = {
        figure: _median(values) for figure, values in per_round.items() if values
    }
    out["per_round"] = {
        figure: [round(value, 3) for value in values]
        for figure, values in per_round.items()
        if values
    }
    out["rounds"] = rounds
    return out


def closed_loop_bars(ratio: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """Each bar of CLOSED_LOOP_BARS whose two variants were both measured."""
    out = {}
    for name, bar in CLOSED_LOOP_BARS.items():
        measured = ratio.get(bar.ratio)
        if measured is None or not _number(measured.get("rps")):
            continue
        value = measured["rps"]
        out[name] = {
            "pass": value >= bar.floor,
            "value": value,
            "rule": f"median over rounds of {bar.what} req/s in the same round >= {bar.floor:g}",
            "per_round": measured["per_round"]["rps"],
        }
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
    m_runs = {run["round"]: run for run in m["rounds"]}
    per_round: dict[str, list[float]] = {figure: [] for figure in ADDED_FIGURES}
    rounds = []
    for a in n["rounds"]:
        b = m_runs.get(a["round"])
        if b is None:
            continue
        rounds.append(a["round"])
        for figure in ADDED_FIGURES:
            if _number(a.get(figure)) and _number(b.get(figure)):
                per_round[figure].append(a[figure] - b[figure])
    out["added"] = {figure: _median(values) for figure, values in per_round.items() if values}
    out["per_round"] = {
        figure: [round(value, 3) for value in values]
        for figure, values in per_round.items()
        if values
    }
    out["rounds"] = rounds
    return out


def validation_bars(
    cost: dict[str, Any] | None, open_loop: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """validation_added_p50: n p50 - m p50 under the open loop of POSTs when it ran (the
    latency validation adds to a request); else the closed-loop median, saturated."""
    if open_loop is not None and "added_p50_ms" in open_loop:
        value = open_loop["added_p50_ms"]
        return {
            "validation_added_p50": {
                "pass": value <= BAR_VALIDATION_ADDED_P50_MS,
                "value": value,
                "rule": (
                    f"median over {len(open_loop.get('rounds') or [])} alternating rounds of "
                    f"n p50 - m p50 (ms), open loop of POSTs at {open_loop['rate']:g} req/s, "
                    f"<= {BAR_VALIDATION_ADDED_P50_MS:g}"
                ),
                "per_round": open_loop.get("added_p50_ms_per_round"),
                "closed_loop_added_p50_ms": (cost or {}).get("added", {}).get("p50_ms"),
                "server_cpu_added_us": (cost or {})
                .get("added", {})
                .get("server_cpu_us_per_request"),
            }
        }
    if cost is None or "p50_ms" not in cost.get("added", {}):
        return {}
    value = cost["added"]["p50_ms"]
    return {
        "validation_added_p50": {
            "pass": value <= BAR_VALIDATION_ADDED_P50_MS,
            "value": value,
            "rule": (
                f"median over rounds of n p50 - m p50 (ms, wrk -c{WRK_CONNECTIONS}, same "
                f"round) <= {BAR_VALIDATION_ADDED_P50_MS:g}"
            ),
            "per_round": cost["per_round"]["p50_ms"],
            "server_cpu_added_us": cost["added"].get("server_cpu_us_per_request"),
        }
    }


def rate_limit_open_loop_bars(measured: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """rate_limit_added_p50, when j's open loop ran: its ratelimit entries' p50."""
    if measured is None or "ratelimit_ms" not in measured.get("j", {}):
        return {}
    figures = measured["j"]["ratelimit_ms"]
    return {
        "rate_limit_added_p50": {
            "pass": figures["p50"] <= BAR_RATE_LIMIT_ADDED_P50_MS,
            "value": figures["p50"],
            "rule": (
                f"p50 of j's Server-Timing ratelimit;dur= (ms), open loop at "
                f"{measured['rate']:g} req/s, <= {BAR_RATE_LIMIT_ADDED_P50_MS:g}"
            ),
            "p99": figures["p99"],
        }
    }


# --- open loop -----------------------------------------------------------------------------


def measure_open_loop(
    url: str,
    rate: float,
    duration: float,
    watch: dict[str, list[int]],
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
    warmup: float = WARMUP_S,
) -> tuple[dict[str, Any], LoadResult]:
    # The warm-up runs on the same connections, inside the measured call; the CPU meter
    # spans it too, which is harmless: it runs at the same rate, and shares are per second.
    meter = CpuMeter(watch)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(
            run_open_loop(
                url,
                rate=rate,
                duration=duration,
                headers=headers or None,
                warmup=warmup,
                method=method,
                body=body,
            )
        )
    cpu = meter.finish()
    ms = 1000.0
    summary: dict[str, Any] = {
        "tool": f"gateway.loadgen open loop, {rate:g} req/s for {duration:g}s",
        "url": url,
        "rate": rate,
        "requests": len(result.samples),
        "achieved_rate": round(result.achieved_rate, 1),
        "p50_ms": round(result.percentile(50) * ms, 3),
        "p90_ms": round(result.percentile(90) * ms, 3),
        "p99_ms": round(result.percentile(99) * ms, 3),
        "max_ms": round(result.percentile(100) * ms, 3),
        "errors": result.errors,
        "statuses": result.status_counts(),
        "partial_share": round(result.partial_share, 4),
        "send_lag_p99_ms": round(result.send_lag(99) * ms, 3),
        "send_lag_max_ms": round(result.send_lag(100) * ms, 3),
        "server_timing_ms": server_timing_summary(result),
        "cpu": cpu,
    }
    server_share = cpu["processes"].get("server")
    if server_share is not None and result.achieved_rate > 0:
        # The warm-up ran at the same rate, so the share still divides by this rate.
        summary["server_cpu_us_per_request"] = round(server_share / result.achieved_rate * 1e6, 1)
    return summary, result


def server_timing_summary(result: LoadResult) -> dict[str, dict[str, float]]:
    """p50/p99 of each Server-Timing entry: how the gateway spent each response's time."""
    by_name: dict[str, list[float]] = {}
    for sample in result.samples:
        if sample.server_timing is None:
            continue
        for name, dur, _desc in parse_server_timing(sample.server_timing):
            if dur is not None:
                by_name.setdefault(name, []).append(dur)
    return {
        name: {
            "p50": round(percentile(values, 50), 2),
            "p99": round(percentile(values, 99), 2),
        }
        for name, values in by_name.items()
    }


# --- configurations ------------------------------------------------------------------------


def services_command(ports: dict[str, int], latency: str | None, p99: str | None) -> list[str]:
    command = [PYTHON, "-m", "examples.services", "--only", ",".join(ports)]
    for kind, port in ports.items():
        command += ["--port", f"{kind}={port}"]
        if latency is not None:
            command += ["--latency", f"{kind}={latency}"]
        if p99 is not None:
            command += ["--p99", f"{kind}={p99}"]
    return command


def write_gateway_config(
    folder: Path, port: int, routes: list[dict[str, Any]], access_log: str = "off", **extra: Any
) -> Path:
    config = {
        "server": {
            "listen": {"host": HOST, "port": port},
            "access_log": access_log,
            "watch": False,
        },
        **extra,
        "routes": routes,
    }
    path = folder / "gateway.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def proxy_gateway_config(
    folder: Path,
    port: int,
    upstream: str,
    access_log: str,
    auth: str | None = None,
    token_ttl_s: int = MIN_TOKEN_TTL_S,
    rate_limits: dict[str, Any] | None = None,
    cache: dict[str, Any] | None = None,
    ttl_upstream: str | None = None,
    observability: bool | None = None,
) -> Path:
    """d's route (d2 with an access log); with ``auth`` (api_key or jwt), g's or h's.

    The authenticated route is d's with one line more, ``auth: [METHOD]``, and the
    defaults otherwise (identity headers sent upstream, the checked credential hidden
    from it). Its credential store is a SQLite file in ``folder``, absolute paths so that
    the CLI and the gateway open the same one whatever their working directory.

    With ``rate_limits`` (the top-level section: its store), i's or j's: d's route with
    ``rate_limit: BENCH_ROUTE_LIMIT``, a limit decided on every request that never
    refuses, and the defaults otherwise (``on_store_down: fail_open``).

    With ``cache`` (the route's ``cache:``), o's and p's: d's route with ``cache:`` and
    ``conditional: {}``, the process's ``cache:`` section at its defaults. With
    ``ttl_upstream`` too, a second route, CACHE_TTL_PATH cached for CACHE_TTL_S, in
    front of that (counting) users service: the TTL check's.

    With ``observability`` (q's False, r's True), ``metrics:`` and ``tracing:`` both
    switched that way; otherwise both left at their defaults (on).
    """
    route: dict[str, Any] = {"name": "users", "path": "/users/{id}", "methods": ["GET"]}
    extra: dict[str, Any] = {}
    if rate_limits is not None:
        route["rate_limit"] = BENCH_ROUTE_LIMIT
        extra["rate_limits"] = rate_limits
    if auth is not None:
        route["auth"] = [auth]
        spec: dict[str, Any] = {
            "store": "sqlite",
            "sqlite_path": str((folder / "credentials.db").resolve()),
            "pepper_file": str((folder / "pepper.json").resolve()),
        }
        if auth == "jwt":
            # The gateway trusts itself as issuer `self` once it issues tokens; ES256 is
            # the default algorithm, named anyway since it is what h measures.
            spec["oauth"] = {
                "enabled": True,
                "issuer": f"http://{HOST}:{port}",
                "token_ttl": f"{token_ttl_s}s",
                "algorithm": "ES256",
            }
        extra["auth"] = spec
    if cache is not None:
        route["cache"] = cache
        route["conditional"] = BENCH_CONDITIONAL
        extra["cache"] = {}
    if observability is not None:
        extra["metrics"] = {"enabled": observability}
        extra["tracing"] = {"enabled": observability}
    route["proxy"] = {"upstream": "users", "timeout": "5s"}
    routes = [route]
    upstreams: dict[str, Any] = {"users": {"targets": [upstream]}}
    if ttl_upstream is not None:
        routes.append(
            {
                "name": "users-ttl",
                "path": CACHE_TTL_PATH,
                "methods": ["GET"],
                "cache": {"ttl": f"{CACHE_TTL_S}s"},
                "proxy": {"upstream": "counting", "path": "/users/{id}", "timeout": "5s"},
            }
        )
        upstreams["counting"] = {"targets": [ttl_upstream]}
    return write_gateway_config(
        folder, port, routes=routes, access_log=access_log, **extra, upstreams=upstreams
    )


def orders_gateway_config(
    folder: Path,
    port: int,
    upstream: str,
    idempotency: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
) -> Path:
    """k to n: ``POST /orders`` proxied to the orders service, access log off.

    l adds ``idempotency:`` (the top-level store left at its default, memory), n adds
    ``validation:``; k's and m's routes are the same route without them.
    """
    route: dict[str, Any] = {"name": "orders", "path": ORDERS_PATH, "methods": ["POST"]}
    if idempotency is not None:
        route["idempotency"] = idempotency
    if validation is not None:
        route["validation"] = validation
    route["proxy"] = {"upstream": "orders", "timeout": "5s"}
    return write_gateway_config(
        folder, port, routes=[route], upstreams={"orders": {"targets": [upstream]}}
    )


def credential_cli(config: Path, *args: str) -> str:
    """stdout of ``python -m gateway ARGS -c CONFIG`` (keys create, clients create)."""
    command = [PYTHON, "-m", "gateway", *args, "-c", str(config)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=CLI_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`gateway {' '.join(args)}` took over {CLI_TIMEOUT_S:g}s") from exc
    if done.returncode != 0:
        raise BenchError(
            f"`gateway {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def create_api_key(config: Path) -> str:
    """A new API key of consumer ``bench`` in the config's store (the CLI prints it)."""
    out = credential_cli(config, "keys", "create", "--consumer", BENCH_CONSUMER)
    words = out.split()
    if len(words) != 1 or not words[0].startswith("gwk_"):
        raise BenchError(f"`gateway keys create` printed no key: {out!r}")
    return words[0]


def create_client(config: Path) -> tuple[str, str]:
    """A new OAuth client ``(client_id, client_secret)`` of consumer ``bench``."""
    out = credential_cli(
        config, "clients", "create", "--consumer", BENCH_CONSUMER, "--scopes", BENCH_SCOPE
    )
    values = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
    client_id, secret = values.get("client_id"), values.get("client_secret")
    if not client_id or not secret:
        raise BenchError(f"`gateway clients create` printed no client: {out!r}")
    return client_id, secret


def fetch_token(token_url: str, client: tuple[str, str], lasting: float) -> str:
    """An access token from the gateway's token endpoint (client credentials, Basic).

    It must last at least ``lasting`` seconds: a token expiring mid-run would turn the
    rest of h's runs into fast 401s.
    """
    # RFC 6749 section 2.3.1: each part is form-urlencoded before the Basic encoding.
    basic = ":".join(urllib.parse.quote(part, safe="") for part in client)
    request = urllib.request.Request(
        token_url,
        data=urllib.parse.urlencode({"grant_type": "client_credentials"}).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(basic.encode()).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise BenchError(f"POST {token_url} answered {exc.code}: {exc.read()[:300]!r}") from exc
    except (OSError, ValueError) as exc:
        raise BenchError(f"POST {token_url} failed: {exc}") from exc
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or token.count(".") != 2:
        raise BenchError(f"POST {token_url} returned no JWT: {body!r}")
    expires_in = body.get("expires_in")
    if not _number(expires_in) or expires_in < lasting:
        raise BenchError(f"the token lasts {expires_in}s, the run needs {lasting:.0f}s")
    return token


def plan_token_ttl_s(variants: int, rounds: int, round_s: int) -> int:
    """h's token lifetime: an hour, or twice the closed-loop runs' planned time if longer."""
    planned = variants * (WARMUP_S + rounds * (round_s + 5)) + 120
    return max(MIN_TOKEN_TTL_S, math.ceil(2 * planned))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _flip(text: str, index: int) -> str:
    """``text`` with the character at ``index`` changed (to another base64url letter)."""
    new = "A" if text[index] != "A" else "B"
    return text[:index] + new + text[index + 1 :]


def tampered_credentials(key: str, headers: dict[str, str]) -> dict[str, dict[str, str]]:
    """Forgeries of g's key or h's token, each of which must be refused with a 401.

    A route that accepted any key, or a token cache keyed by less than the whole token
    (say, by its signature alone), would answer them 200 and be measured doing less
    work. Probed after the genuine credential, so that its verification is cached.
    """
    ((name, value),) = headers.items()
    if key == "g":
        # gwk_<key id>_<secret>: change the secret's middle, keep the key id (which has
        # no '_'; the secret may).
        secret_at = value.index("_", len("gwk_")) + 1
        middle = secret_at + (len(value) - secret_at) // 2
        return {"a key with a wrong secret": {name: _flip(value, middle)}}
    scheme, _, token = value.partition(" ")
    head, payload, signature = token.split(".")
    claims = json.loads(_b64url_decode(payload))
    claims["sub"] = f"{claims.get('sub')}-forged"
    forged = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    flipped = _flip(signature, len(signature) // 2)
    return {
        "a token with a changed payload and the original signature": {
            name: f"{scheme} {head}.{forged}.{signature}"
        },
        "a token with a changed signature": {name: f"{scheme} {head}.{payload}.{flipped}"},
    }


def fanout_backends(origins: dict[str, str], slow: bool) -> dict[str, Any]:
    slow_suffix = f"&delay={SLOW_DELAY}" if slow else ""
    return {
        "users": {"url": f"{origins['users']}/users/{{id}}", "required": True},
        "orders": {"url": f"{origins['orders']}/orders?user={{id}}", "fallback": {"items": []}},
        "recommendations": {
            "url": f"{origins['recommendations']}/recommendations?user={{id}}{slow_suffix}",
            "fallback": {"items": []},
        },
        "inventory": {"url": f"{origins['inventory']}/inventory?skus=SKU-{{id}}"},
        "notifications": {
            "url": f"{origins['notifications']}/notifications?user={{id}}",
            "fallback": {"unread": 0, "items": []},
        },
    }


def fanout_gateway_config(folder: Path, port: int, origins: dict[str, str]) -> Path:
    budget = f"{FANOUT_BUDGET_MS}ms"
    return write_gateway_config(
        folder,
        port,
        routes=[
            {
                "name": "fanout",
                "path": "/fanout/{id}",
                "fanout": {"budget": budget, "backends": fanout_backends(origins, slow=False)},
            },
            {
                "name": "fanout-slow",
                "path": "/fanout-slow/{id}",
                "fanout": {"budget": budget, "backends": fanout_backends(origins, slow=True)},
            },
        ],
    )


def nginx_version() -> tuple[int, ...] | None:
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", done.stderr + done.stdout)
    return tuple(int(n) for n in match.groups()) if match else None


def nginx_command(folder: Path, port: int, upstream_port: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    temp = {
        name: folder / name
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # all under tmp
    }
    conf.write_text(
        f"""\
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    upstream users {{
        server {HOST}:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://users;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )
    command = ["nginx", "-p", str(folder), "-c", str(conf)]
    version = nginx_version()
    if version is not None and version >= (1, 19, 5):
        # Otherwise nginx opens its compiled-in error log before reading the config.
        command += ["-e", str(folder / "error.log")]
    return command


# --- k to n: the POST bodies, n's schema, wrk's Lua scripts ------------------------------

#: k's and l's body, about 100 bytes: what the orders service needs (sku, quantity)
#: and a little more.
SMALL_ORDER: dict[str, Any] = {
    "sku": "BOOK-12345",
    "quantity": 2,
    "currency": "EUR",
    "note": "leave the parcel with the concierge",
}

_ADDRESS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["line1", "city", "postal_code", "country"],
    "additionalProperties": False,
    "properties": {
        "line1": {"type": "string", "minLength": 1, "maxLength": 100},
        "line2": {"type": "string", "maxLength": 100},
        "city": {"type": "string", "minLength": 1, "maxLength": 60},
        "postal_code": {"type": "string", "pattern": "^[A-Z0-9][A-Z0-9 -]{2,9}$"},
        "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
    },
}
_SKU_SCHEMA: dict[str, Any] = {"type": "string", "pattern": "^[A-Z]{4}-[0-9]{5}$"}
#: n's body schema: an order as a shop would check it (nested objects, arrays of
#: objects, string patterns and formats, integer bounds, enums, no unknown members).
ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_id", "sku", "quantity", "currency", "customer", "items", "payment"],
    "additionalProperties": False,
    "properties": {
        "order_id": {"type": "string", "pattern": "^ORD-[0-9]{4}-[0-9]{6}$"},
        "sku": _SKU_SCHEMA,
        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
        "currency": {"enum": ["USD", "EUR", "GBP"]},
        "placed_at": {"type": "string", "format": "date-time"},
        "customer": {
            "type": "object",
            "required": ["id", "email", "name", "shipping_address"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^cus_[0-9a-f]{8}$"},
                "email": {"type": "string", "format": "email", "maxLength": 254},
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "tier": {"enum": ["free", "plus", "pro", "enterprise"]},
                "shipping_address": _ADDRESS_SCHEMA,
                "billing_address": _ADDRESS_SCHEMA,
            },
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 50,
            "items": {
                "type": "object",
                "required": ["sku", "quantity", "unit_price_cents"],
                "additionalProperties": False,
                "properties": {
                    "sku": _SKU_SCHEMA,
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                    "unit_price_cents": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
                    "gift_wrap": {"type": "boolean"},
                    "options": {
                        "type": "object",
                        "maxProperties": 10,
                        "additionalProperties": {"type": "string", "maxLength": 40},
                    },
                    "tags": {
                        "type": "array",
                        "maxItems": 10,
                        "uniqueItems": True,
                        "items": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,31}$"},
                    },
                },
            },
        },
        "payment": {
            "type": "object",
            "required": ["method", "amount_cents"],
            "additionalProperties": False,
            "properties": {
                "method": {"enum": ["card", "paypal", "invoice"]},
                "card_last4": {"type": "string", "pattern": "^[0-9]{4}$"},
                "amount_cents": {"type": "integer", "minimum": 1},
                "captured": {"type": "boolean"},
            },
        },
        "notes": {"type": "string", "maxLength": 500},
        "metadata": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 64}},
    },
}
#: Items in the 2 KB order: the body is then about 2,050 bytes.
ORDER_ITEMS = 9
_CATEGORIES = ("BOOK", "ELEC", "HOME", "TOYS", "GARD", "SPRT")


def large_order() -> dict[str, Any]:
    """m's and n's body: an order of ORDER_ITEMS items, about 2 KB, valid under
    ORDER_SCHEMA (checked in-process before anything starts), with the top-level
    ``sku`` and ``quantity`` the orders service needs to answer 201."""
    items: list[dict[str, Any]] = [
        {
            "sku": f"{_CATEGORIES[i % len(_CATEGORIES)]}-{10_000 + 7_919 * i % 90_000:05d}",
            "quantity": 1 + i % 3,
            "unit_price_cents": 299 + 1_733 * i,
            "gift_wrap": i % 2 == 0,
            "options": {"colour": ("red", "blue", "green")[i % 3], "size": "SML"[i % 3]},
            "tags": ["spring-sale", f"aisle-{i}"],
        }
        for i in range(ORDER_ITEMS)
    ]
    address = {
        "line1": "12 Analytical Engine Row",
        "line2": "Flat 3",
        "city": "London",
        "postal_code": "SW1A 1AA",
        "country": "GB",
    }
    return {
        "order_id": "ORD-2024-000123",
        "sku": items[0]["sku"],
        "quantity": items[0]["quantity"],
        "currency": "GBP",
        "placed_at": "2024-03-01T12:34:56Z",
        "customer": {
            "id": "cus_8f3a9c2d",
            "email": "ada.lovelace@example.com",
            "name": "Ada Lovelace",
            "tier": "pro",
            "shipping_address": address,
            "billing_address": {**address, "line2": "c/o Babbage"},
        },
        "items": items,
        "payment": {
            "method": "card",
            "card_last4": "4242",
            "amount_cents": sum(item["quantity"] * item["unit_price_cents"] for item in items),
            "captured": False,
        },
        "notes": "Please leave the parcel with the concierge if nobody answers the door.",
        "metadata": {"channel": "web", "campaign": "spring-sale", "client_version": "3.14.2"},
    }


def invalid_order(order: dict[str, Any]) -> dict[str, Any]:
    """``order`` with one nested violation (an item's sku breaks its pattern): n must
    refuse it with 422, while m, and the orders service itself, accept it."""
    items = [dict(item) for item in order["items"]]
    items[-1]["sku"] = "not-a-sku"
    return {**order, "items": items}


def _compile_order_schema() -> tuple[Callable[[Any], Any], Any]:
    """The gateway's own compiled ORDER_SCHEMA: (fast validator, full validator)."""
    import gateway.config  # noqa: F401  (imported first: validation <-> config.loader cycle)
    from gateway.policies.validation import compile_schema

    return compile_schema(ORDER_SCHEMA)


def check_order_schema(document: dict[str, Any]) -> None:
    """The 2 KB order is valid (both validators agree), its broken twin is not: else n
    would measure 422s, or a schema that checks nothing."""
    fast, full = _compile_order_schema()
    errors = [error.message for error in full.iter_errors(document)]
    if errors:
        raise BenchError(f"the 2 KB order breaks its own schema: {errors}")
    try:
        fast(document)
    except Exception as exc:
        raise BenchError(f"the 2 KB order fails the fast validator: {exc}") from exc
    if not list(full.iter_errors(invalid_order(document))):
        raise BenchError("the schema accepts the broken order: it checks nothing")


def validator_microbenchmark(document: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The validator's own cost: ``compile_schema(ORDER_SCHEMA)[0](document)`` called in
    a loop in this process (on the load core, before any load starts), and next to it
    ``orjson.loads`` of the same body (n parses it too; m does not).

    Each of MICRO_REPEATS repetitions runs for about MICRO_REPEAT_S; the figures are
    the median and the fastest repetition, in microseconds per call.
    """
    import orjson

    fast, _ = _compile_order_schema()

    def per_call(call: Callable[[], object]) -> dict[str, Any]:
        started = time.perf_counter()
        calls = 0
        while time.perf_counter() - started < 0.05:  # warm up, and size a repetition
            call()
            calls += 1
        number = max(100, round(calls * MICRO_REPEAT_S / 0.05))
        times = []
        for _ in range(MICRO_REPEATS):
            started = time.perf_counter()
            for _ in range(number):
                call()
            times.append((time.perf_counter() - started) / number * 1e6)
        return {
            "us_median": round(statistics.median(times), 2),
            "us_min": round(min(times), 2),
            "calls_per_repeat": number,
            "repeats": MICRO_REPEATS,
        }

    return {
        "what": "compile_schema(ORDER_SCHEMA)[0](document), in the harness's process",
        "body_bytes": len(body),
        "validate": per_call(lambda: fast(document)),
        "orjson_loads": per_call(lambda: orjson.loads(body)),
    }


def _lua_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal (no escapes inside, whatever it holds)."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def post_script(folder: Path, name: str, body: bytes, unique_keys: bool) -> Path:
    """A wrk script POSTing ``body`` as JSON to the URL's path.

    With ``unique_keys``, each request carries ``Idempotency-Key: "<prefix>-<thread>-<n>"``,
    ``n`` counting up in ``request()``: the prefix (the script's argument, given after
    ``--``) differs per wrk run, so no key is ever sent twice to a gateway, warm-up and
    rounds included. Without, the request is built once (wrk's fast path).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.lua"
    text = body.decode()
    if unique_keys:
        script = f"""-- POST {len(body)} bytes of JSON, each request with a new Idempotency-Key.
-- The key is an RFC 8941 sf-string: "<prefix>-<thread>-<n>".
local body = {_lua_string(text)}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
local prefix = "run"
local counter = 0
function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(id or 0)
end
function request()
  counter = counter + 1
  local headers = {{}}
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = '"' .. prefix .. "-" .. counter .. '"'
  return wrk.format("POST", nil, headers, body)
end
"""
    else:
        script = f"""-- POST {len(body)} bytes of JSON, the same request every time.
wrk.method = "POST"
wrk.body = {_lua_string(text)}
wrk.headers["Content-Type"] = "application/json"
"""
    path.write_text(script)
    return path


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One JSON POST: status, headers, body (error statuses too)."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()
    except OSError as exc:
        raise BenchError(f"POST {url} failed: {exc}") from exc


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET: status, headers, body (304 and error statuses too)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()
    except OSError as exc:
        raise BenchError(f"GET {url} failed: {exc}") from exc


def upstream_count(origin: str) -> int:
    """Requests bench/counting_upstream.py has answered so far (its /count is not one)."""
    status, _, raw = fetch(origin + "/count")
    try:
        count = json.loads(raw).get("requests") if status == 200 else None
    except ValueError:
        count = None
    if not isinstance(count, int):
        raise BenchError(f"the counting upstream answered {status}: {raw[:200]!r}")
    return count


def cache_ttl_limit(duration: float) -> int:
    """The most upstream requests one key may cost over ``duration``: one per TTL, plus
    one for a refresh that straddles the run's edge."""
    return math.ceil(duration / CACHE_TTL_S - 1e-9) + 1


def cache_ttl_bars(measured: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """cache_ttl_upstream_load, when the TTL check ran: upstream requests <= the limit."""
    if measured is None or "upstream_requests" not in measured:
        return {}
    value = measured["upstream_requests"]
    return {
        "cache_ttl_upstream_load": {
            "pass": value <= measured["limit"],
            "value": value,
            "rule": (
                f"upstream requests for one key under an open loop at {measured['rate']:g} "
                f"req/s for {measured['duration_s']:g}s, ttl {CACHE_TTL_S}s, <= "
                f"ceil(duration / ttl) + 1 = {measured['limit']}"
            ),
        }
    }


_ORDER_ID = re.compile(r"^ord_(\d+)$")


def orders_made(origin: str) -> int:
    """How many orders the orders service has created so far, this probe's included.

    It numbers the orders it creates (``ord_100001``, ...) and keeps nothing else: one
    direct POST before and one after a run tell how many POSTs reached it in between.
    """
    status, _, raw = post(origin + ORDERS_PATH, json.dumps(SMALL_ORDER).encode())
    try:
        order_id = json.loads(raw).get("id", "") if status == 201 else ""
    except ValueError:
        order_id = ""
    match = _ORDER_ID.match(order_id) if isinstance(order_id, str) else None
    if match is None:
        raise BenchError(f"the orders service answered {status}: {raw[:200]!r}")
    return int(match[1])


# --- redis-server: j's limiter store ------------------------------------------------------


def redis_executable() -> str:
    """The redis-server to start for j: ``$REDIS_SERVER`` or ``redis-server`` on PATH."""
    wanted = os.environ.get("REDIS_SERVER", "redis-server")
    found = shutil.which(wanted)
    if found is None:
        raise BenchError(
            f"{wanted!r} is not on PATH: j needs a redis-server (install it, set "
            "$REDIS_SERVER to one, or leave j out with --only)"
        )
    return found


def redis_command(folder: Path, port: int) -> list[str]:
    """A private redis-server on ``HOST:port``: no persistence, working in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        redis_executable(),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",  # no snapshots, no append-only file: nothing is written during the runs
        "--appendonly",
        "no",
        "--dir",
        str(folder),
        "--daemonize",
        "no",
    ]


def redis_call(port: int, *args: str) -> bytes:
    """One command to the redis-server on ``HOST:port``: its reply (status, integer, bulk).

    A few lines of RESP rather than a client library: the harness only needs PING and
    INFO, on its own connection, never the gateway's.
    """
    payload = b"*%d\r\n" % len(args)
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as sock:
            sock.sendall(payload)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise BenchError(f"redis-server on {port} closed the connection")
                data += chunk
                head, found, rest = data.partition(b"\r\n")
                if not found:
                    continue
                kind, value = head[:1], head[1:]
                if kind == b"-":
                    raise BenchError(f"redis-server answered {head.decode(errors='replace')}")
                if kind != b"$":
                    return value
                size = int(value)
                if size < 0:
                    return b""
                if len(rest) >= size + 2:
                    return rest[:size]
    except OSError as exc:
        raise BenchError(f"redis-server on {port}: {exc}") from exc


@dataclass
class RedisStore:
    """j's private redis-server, pinned to the load core like the upstream services."""

    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def decisions(self) -> int:
        """EVALSHA calls the server has carried out so far: the limiter's decisions.

        The gateway decides with one EVALSHA per request; one that fails or times out
        admits the request anyway (``on_store_down: fail_open``) and marks it. Counting
        the server's own EVALSHAs over a run and comparing them with the responses is
        what tells a fast run from one whose requests skipped Redis.
        """
        info = redis_call(self.port, "INFO", "commandstats").decode(errors="replace")
        for line in info.splitlines():
            name, _, values = line.partition(":")
            if name.strip() != "cmdstat_evalsha":
                continue
            stats = dict(item.partition("=")[::2] for item in values.strip().split(","))
            ok = int(stats.get("calls", 0))
            return ok - int(stats.get("failed_calls", 0)) - int(stats.get("rejected_calls", 0))
        return 0


def wait_redis(proc: Proc, port: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Return once the redis-server answers PING (it accepts connections before that)."""
    wait_ready(proc, port, timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if redis_call(port, "PING") == b"PONG":
                return
        except BenchError:
            pass
        if proc.popen.poll() is not None:
            raise BenchError(_exited(proc, "before answering PING"))
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server on {port} did not answer PING within {timeout:g}s")
        time.sleep(0.05)


def check_rate_limited(headers: dict[str, str], what: str, redis: bool) -> None:
    """i's or j's probe answer carries the limit's headers (and j's the Redis timing).

    A route whose limit was not applied, or whose decision was skipped (``Gateway-
    RateLimit: store-unavailable``: Redis unreachable, the route admits anyway), would
    otherwise be measured doing less work than it claims.
    """
    lower = {name.lower(): value for name, value in headers.items()}
    policy = lower.get("ratelimit-policy")
    if policy is None or BENCH_LIMIT_POLICY not in policy:
        raise BenchError(f"{what}: no RateLimit-Policy with {BENCH_LIMIT_POLICY} ({policy!r})")
    if "ratelimit" not in lower:
        raise BenchError(f"{what}: the answer has no RateLimit header")
    if "gateway-ratelimit" in lower:
        raise BenchError(f"{what}: Gateway-RateLimit: {lower['gateway-ratelimit']}")
    timing = lower.get("server-timing", "")
    if redis and "ratelimit;dur=" not in timing:
        raise BenchError(f"{what}: no ratelimit;dur= in Server-Timing ({timing!r})")


# --- the run -------------------------------------------------------------------------------


@dataclass
class Target:
    """A closed-loop variant whose server is up and answering, and its runs so far."""

    key: str
    url: str
    port: int
    #: The server under test, started here; None for a (the users service, direct).
    proc: Proc | None = None
    access_log: Path | None = None
    #: Its processes (nginx: master and worker), known once it is ready.
    server_pids: list[int] = field(default_factory=list)
    #: Sent with every request, probes and wrk alike: g's API key, h's bearer token.
    headers: dict[str, str] = field(default_factory=dict)
    #: h: the OAuth client whose token goes in ``headers``, fetched once the gateway is up.
    client: tuple[str, str] | None = None
    #: i, j: the gateway's ``rate_limits:`` section (its limiter's store).
    rate_limits: dict[str, Any] | None = None
    #: j: its private redis-server, stopped with it.
    redis: RedisStore | None = None
    #: The sample service behind it: ``users`` (a to j) or ``orders`` (k to n).
    upstream: str = "users"
    #: k to n: the JSON body POSTed (by wrk's Lua ``script`` and by the probes).
    body: bytes | None = None
    script: Path | None = None
    #: k, l: a new ``Idempotency-Key`` on every request (the script numbers them).
    unique_keys: bool = False
    #: wrk runs so far (the warm-up included): the prefix of each run's keys.
    wrk_runs: int = 0
    #: Requests answered in the warm-up run (l: records it left in the memory store).
    warmup_requests: int | None = None
    #: The status every answer must have: 200, or p's 304 (its If-None-Match matches).
    status: int = 200
    #: o, p: the Cache-Status of the probe's second GET (a hit).
    cache_status: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def next_script(self) -> tuple[Path | None, list[str]]:
        """The Lua script and its arguments for the next wrk run: with unique keys, a
        prefix of its own (``k1``, ``k2``...), so no key repeats across runs."""
        self.wrk_runs += 1
        if not self.unique_keys:
            return self.script, []
        return self.script, [f"{self.key}{self.wrk_runs}"]


@dataclass
class Upstream:
    """A sample service the closed-loop variants proxy to, on the load core."""

    kind: str
    proc: Proc
    port: int

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"


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

        They all stay up for the whole of the rounds: an idle asyncio server or nginx
        costs no CPU (the gateway's health checks are passive), and restarting them
        per round would measure cold servers. Their CPU is still watched
        (``idle_servers``) to show they stayed idle.
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
            targets.append(Target(key, url, port, proc, access_log, status=status))
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
        target.proc = self.start_server(name, command)
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
        target.proc = self.start_server(name, command)

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
        target.proc = self.start_server(name, command)

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
        # One warm-up per server, before the first round: connections, caches and code
        # paths warm. Later rounds find them still warm, the servers having stayed up.
        for key in self.orders[0]:
            self.say(f"[{key}] {NAMES[key]}: warm-up {WARMUP_S:g}s")
            target = live[key]
            warm_up = functools.partial(
                wrk, target.url, WARMUP_S, self.cores, target.headers, *target.next_script()
            )
            text = self._guard(target, warm_up)
            if text is not None and target.unique_keys:
                with contextlib.suppress(BenchError):
                    target.warmup_requests = parse_wrk(text)["requests"]
        for number, order in enumerate(self.orders, start=1):
            for position, key in enumerate(order, start=1):
                target = live[key]
                if target.error is not None:
                    continue
                upstream = self.upstreams[target.upstream]
                if upstream.proc.popen.poll() is not None:
                    # Every proxy in front of it would now measure fast 502s: stop them,
                    # keeping the rounds so far.
                    error = _exited(upstream.proc, f"during round {number}")
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
                    target.runs.append({"round": number, "position": position, **result})

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
            raise BenchError(_exited(upstream.proc, "during this run"))
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
            # Every request left a record (none expire within a run): how many, about
            # (wrk's responses; a few in flight at each run's end are not counted).
            keys = target.warmup_requests or 0
            for run in target.runs:
                run["records_stored_before"] = keys
                keys += run.get("requests") or 0
            result["records_stored"] = keys
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
                raise BenchError(_exited(o.proc, "before the TTL check"))
            before = upstream_count(counting.origin)
            watch = {"server": o.server_pids, "upstream": [counting.proc.pid]}
            summary, result = measure_open_loop(
                url, CACHE_TTL_OPEN_RATE, self.duration, watch, warmup=0.0
            )
            if counting.proc.popen.poll() is not None:
                raise BenchError(_exited(counting.proc, "during the TTL check"))
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
                figure: _median([run[key][figure] for run in rounds])
                for figure in ("p50_ms", "p90_ms", "p99_ms", "server_cpu_us_per_request")
                if all(_number(run[key].get(figure)) for run in rounds)
            }
        for figure in ("p50_ms", "p99_ms"):
            per_round = [run[f"added_{figure}"] for run in rounds]
            out[f"added_{figure}"] = _median(per_round)
            out[f"added_{figure}_per_round"] = per_round

    def _open_loop(self, target: Target, targets: Sequence[Target], users: Proc) -> dict[str, Any]:
        """One open loop against ``target``; for j, the ``ratelimit`` entries' figures."""
        if target.proc is not None and target.proc.popen.poll() is not None:
            raise BenchError(_exited(target.proc, "before the open loop"))
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
            raise BenchError(_exited(users, "during the open loop"))
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
            f"p99_ms<={BAR_FANOUT_P99_MS:g}": _bar(
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
            f"p99_ms<={BAR_SLOW_P99_MS:g}": _bar(
                summary["p99_ms"] <= BAR_SLOW_P99_MS, summary["p99_ms"]
            ),
            "partial_share==100%": _bar(summary["partial_share"] == 1.0, summary["partial_share"]),
        }
        return summary


def _exited(proc: Proc, when: str) -> str:
    return f"{proc.name} exited with {proc.popen.returncode} {when}:\n{proc.log_tail()}"


def _bar(passed: bool, value: float) -> dict[str, Any]:
    return {"pass": passed, "value": value}


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


# --- output --------------------------------------------------------------------------------


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
    for name, outcome in report["bars"].items():
        if name in CLOSED_LOOP_BARS:
            print(
                f"  bar {name} ({outcome['rule']}): {'PASS' if outcome['pass'] else 'FAIL'} "
                f"({outcome['value']:.3f})"
            )
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
        print(
            f"  bar validation_added_p50 ({outcome['rule']}): "
            f"{'PASS' if outcome['pass'] else 'FAIL'} ({outcome['value']:.3f})"
        )
    print()


def print_rate_limit_open_loop(report: dict[str, Any]) -> None:
    measured: dict[str, Any] = report["rate_limit_open_loop"]
    print(f"Rate limit, open loop ({measured['tool']})")
    for reason in ("skipped", "error"):
        if reason in measured:
            print(f"  {reason}: {measured[reason]}")
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
    outcome = report["bars"].get("rate_limit_added_p50")
    if outcome is not None:
        print(
            f"  bar rate_limit_added_p50 ({outcome['rule']}): "
            f"{'PASS' if outcome['pass'] else 'FAIL'} ({outcome['value']:.2f})"
        )
    print()


def print_cache_ttl(report: dict[str, Any]) -> None:
    measured: dict[str, Any] = report["cache_ttl"]
    print(f"Cache TTL ({measured['tool']}, ttl {measured['ttl_s']}s)")
    for reason in ("skipped", "error"):
        if reason in measured:
            print(f"  {reason}: {measured[reason]}")
    if "upstream_requests" in measured:
        print(
            f"  {measured['requests']} responses (achieved {measured['achieved_rate']:g} "
            f"req/s, p50 {measured['p50_ms']:.2f}  p99 {measured['p99_ms']:.2f} ms), "
            f"{measured['upstream_requests']} upstream requests (limit {measured['limit']})"
        )
    outcome = report["bars"].get("cache_ttl_upstream_load")
    if outcome is not None:
        print(
            f"  bar cache_ttl_upstream_load ({outcome['rule']}): "
            f"{'PASS' if outcome['pass'] else 'FAIL'} ({outcome['value']})"
        )
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
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": machine_info(cores),
        "variants": run.variants,
        "ratios": ratio,
        "rate_limit_open_loop": run.rate_limit_open,
        "validation": validation,
        "validation_open_loop": run.validation_open,
        "cache_ttl": run.cache_ttl,
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
