"""The variants: their keys, names and groupings, and the tunable constants and bars.

Plain values only: the lowest module of the harness, importing none of the others.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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
#: The closed-loop variants' warm-up run, before each round, on servers just started.
ROUND_WARMUP_S = 1.0
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
